"""The config stanzas that train on an export, following each trainer's documented schema.

- Axolotl (docs/dataset-formats/conversation.qmd and docs/dataset_loading.qmd): a `datasets:` entry
  for a local JSONL file (`ds_type: json`) of type `chat_template`, with `field_messages` naming the
  list and `message_property_mappings` its keys; loss on assistant turns (`roles_to_train`,
  `train_on_eos: turn`). `chat_template: tokenizer_default` uses the model's own template.
- LLaMA-Factory (data/README.md): `dataset_info.json` in the `dataset_dir`, one entry naming the file,
  `formatting: sharegpt`, its `columns` and the ShareGPT `tags` (from/value, human/gpt/system).

Preference pairs (`--to dpo`), on the ShareGPT pair file (pond/export/dpo.py):

- Axolotl (docs/rlhf.qmd, "chat_template.default"): `rl: dpo` and a `datasets:` entry of type
  `chat_template.default` with `field_messages`, `field_chosen`, `field_rejected`, the
  `message_property_mappings` of the turns' keys and the `roles` their values stand for;
  `sample_packing: false`, which every preference method needs (docs/agents/preference_tuning.md).
- LLaMA-Factory (data/README.md, "Preference Dataset" of the sharegpt format): the same entry with
  `ranking: true` and the `chosen` and `rejected` columns.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pond.export.chat import SHAREGPT_ROLE
from pond.export.lineage import comment_block


def _axolotl(stanza: dict[str, Any], info: dict[str, Any]) -> str:
    return (comment_block(info) + "# paste into your Axolotl config (base_model, adapter, ... are yours)\n"
            + yaml.safe_dump(stanza, sort_keys=False))


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
    return _axolotl(stanza, info)


def axolotl_dpo_config(pairs: Path, info: dict[str, Any]) -> str:
    """DPO on the ShareGPT pair file: its turns' keys are from/value, their roles human/gpt/system."""
    stanza = {
        "rl": "dpo",
        "sample_packing": False,
        "chat_template": "tokenizer_default",
        "datasets": [{
            "path": str(Path(pairs).resolve()),
            "ds_type": "json",
            "split": "train",
            "type": "chat_template.default",
            "field_messages": "conversations",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
            "message_property_mappings": {"role": "from", "content": "value"},
            "roles": {role: [tag] for role, tag in SHAREGPT_ROLE.items()},
        }],
    }
    return _axolotl(stanza, info)


def llama_factory_info(data: Path, name: str, ranking: bool = False) -> str:
    """The dataset entry of a ShareGPT file; `ranking`: a preference file, whose `chosen` and `rejected`
    hold one gpt message each after the prompt's turns."""
    entry: dict[str, Any] = {"file_name": Path(data).name, "formatting": "sharegpt"}
    if ranking:
        entry["ranking"] = True
    entry["columns"] = {"messages": "conversations"} | ({"chosen": "chosen", "rejected": "rejected"} if ranking else {})
    entry["tags"] = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                     "system_tag": "system"}
    return json.dumps({name: entry}, indent=2) + "\n"
