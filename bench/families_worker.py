"""The per-family contenders of bench/families.py, each in a process of its own.

`python -m bench.families_worker serve SPEC`: bench.worker's request-by-request protocol, with one more kind,
`st-template`: sentence-transformers `CrossEncoder` on a decoder reranker folder (its causal-LM path: a
`Transformer(text-generation)` module and `LogitScore(yes, no)`, i.e. logit(yes) - logit(no) at the last
token), given the reranker's prompt as the pair text. The folder has no chat template, so CrossEncoder
tokenizes the pair as two plain texts; we cut the document in tokens first, so that its own truncation never
cuts the template's suffix (the bug the issue names) and both contenders score the same tokens.

`qwen3-card`: the Qwen3-Reranker model card's own transformers code (AutoModelForCausalLM, its prompt, the
yes/no logits), the way that model's users run it.

`python -m bench.families_worker rss SPEC`: load sentence-transformers models, score one request per model,
print the peak resident set (VmHWM) as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench import worker

Ranker = worker.Ranker


def st_template_ranker(folder: str, max_length: int, threads: int, template: dict[str, Any]) -> Ranker:
    """CrossEncoder(folder) on a decoder reranker; pairs built from the exported manifest's `template`."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    model = CrossEncoder(folder, max_length=max_length, device="cpu", local_files_only=True)
    tokenizer = model.tokenizer
    query_format = template["query"]
    instruction = template.get("default_instruction") or ""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    suffix_tokens = count(template["suffix"])

    def pair(query: str, document: str) -> tuple[str, str]:
        head = template["prefix"] + query_format.format(instruction=instruction, query=query)
        budget = max(0, max_length - count(head) - suffix_tokens)
        ids = tokenizer(template["document"].format(document=document), add_special_tokens=False)["input_ids"]
        return head, tokenizer.decode(ids[:budget]) + template["suffix"]

    def rank(query: str, documents: Sequence[str]) -> list[float]:
        pairs = [pair(query, d) for d in documents]
        scores = model.predict(pairs, activation_fn=torch.nn.Identity())
        return [worker._sigmoid(float(s)) for s in scores]

    return rank


def qwen3_card_ranker(folder: str, max_length: int, threads: int, template: dict[str, Any]) -> Ranker:
    """The Qwen3-Reranker model card's transformers code, as its users run it: AutoModelForCausalLM,
    left padding, prefix + "<Instruct>: ..\n<Query>: ..\n<Document>: .." (truncated to fit) + suffix, the
    vocabulary logits at the last position, softmax over (no, yes). The prompt texts come from the manifest's
    template (the card's own strings); every request's documents are one batch, as the card's example does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    token_false_id = tokenizer.convert_tokens_to_ids(template["negative_token"])
    token_true_id = tokenizer.convert_tokens_to_ids(template["positive_token"])
    prefix_tokens = tokenizer.encode(template["prefix"], add_special_tokens=False)
    suffix_tokens = tokenizer.encode(template["suffix"], add_special_tokens=False)
    instruction = template.get("default_instruction") or ""

    def format_instruction(query: str, doc: str) -> str:
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def process_inputs(pairs: list[str]) -> Any:
        inputs = tokenizer(
            pairs, padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
        )  # fmt: skip
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        return tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)

    @torch.no_grad()
    def compute_logits(inputs: Any) -> list[float]:
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return [float(x) for x in batch_scores[:, 1].exp().tolist()]

    def rank(query: str, documents: Sequence[str]) -> list[float]:
        return compute_logits(process_inputs([format_instruction(query, d) for d in documents]))

    return rank


def _qwen3_card(spec: dict[str, Any]) -> Ranker:
    return qwen3_card_ranker(
        spec["model_source"], int(spec["max_length"]), int(spec["threads"]), spec["template"]
    )


def _st_template(spec: dict[str, Any]) -> Ranker:
    return st_template_ranker(
        spec["model_source"], int(spec["max_length"]), int(spec["threads"]), spec["template"]
    )


def st_ranker(
    kind: str, folder: str, max_length: int, threads: int, template: dict[str, Any] | None = None
) -> Ranker:
    if kind == "st-template":
        assert template is not None
        return st_template_ranker(folder, max_length, threads, template)
    if kind == "qwen3-card":
        assert template is not None
        return qwen3_card_ranker(folder, max_length, threads, template)
    return worker._sentence_transformers(
        {"model_source": folder, "max_length": max_length, "threads": threads}
    )


def rss(spec: dict[str, Any]) -> dict[str, Any]:
    """Load every model of spec["models"] ({kind, folder, request}), then score each one's request."""
    t0 = time.perf_counter()
    rankers = [
        (
            m,
            st_ranker(
                m["kind"], m["folder"], int(spec["max_length"]), int(spec["threads"]), m.get("template")
            ),
        )
        for m in spec["models"]
    ]
    load_s = time.perf_counter() - t0
    rss_after_load = psutil.Process().memory_info().rss
    for m, rank in rankers:
        rank(m["request"]["query"], m["request"]["documents"])
    return {"rss_peak_bytes": worker._peak_rss(), "rss_after_load_bytes": rss_after_load, "load_s": load_s}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mode, spec = args[0], json.loads(Path(args[1]).read_text())
    if mode == "serve":
        worker.BUILDERS["st-template"] = _st_template
        worker.BUILDERS["qwen3-card"] = _qwen3_card
        worker.serve(spec)
        return 0
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to the log
    protocol.write(json.dumps(rss(spec)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
