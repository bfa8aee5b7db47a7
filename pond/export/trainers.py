"""The config stanzas that train on an export, following each trainer's documented schema.

- Axolotl (docs/dataset-formats/conversation.qmd and docs/dataset_loading.qmd): a `datasets:` entry
  for a local JSONL file (`ds_type: json`) of type `chat_template`, with `field_messages` naming the
  list and `message_property_mappings` its keys; loss on assistant turns (`roles_to_train`,
  `train_on_eos: turn`). `chat_template: tokenizer_default` uses the model's own template.
- LLaMA-Factory (data/README.md): `dataset_info.json` in the `dataset_dir`, one entry naming the file,
  `formatting: sharegpt`, its `columns` and the ShareGPT `tags` (from/value, human/gpt/system).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pond.export.lineage import comment_block


def axolotl_config(data: Path, info: dict[str, Any]) -> str:
    stanza = {
        "chat_template": "tokenizer_default",
        "datasets": [{
            "path": str(Path(data).resolve()),
            "ds_type": "json",
            "type": "chat_template",
            "field_messages": "messages",
            "message_property_mappings": {"role": "role", "content": "content"},
            "roles": {"system": ["system"], "user": ["user"], "assistant": ["assistant"]},
            "roles_to_train": ["assistant"],
            "train_on_eos": "turn",
        }],
    }
    return (comment_block(info) + "# paste into your Axolotl config (base_model, adapter, ... are yours)\n"
            + yaml.safe_dump(stanza, sort_keys=False))


def llama_factory_info(data: Path, name: str) -> str:
    entry = {
        name: {
            "file_name": Path(data).name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                     "assistant_tag": "gpt", "system_tag": "system"},
        }
    }
    return json.dumps(entry, indent=2) + "\n"
