"""Fine-tuning the student (QLoRA / LoRA / full) on curated records: see training.trainer.train."""
