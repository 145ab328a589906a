"""A SciFact-shaped data set of one query and eight documents, for the bench sections' tiny runs."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_scifact(root: Path) -> Path:
    folder = root / "scifact"
    (folder / "qrels").mkdir(parents=True)
    docs = {f"d{i}": f"document {i} about berlin and its population " * (1 + i) for i in range(8)}
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items())
    )
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "berlin population"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n")
    (folder / "bm25_top100.jsonl").write_text(
        json.dumps({"query_id": "q1", "doc_ids": list(docs), "scores": [8.0 - i for i in range(8)]}) + "\n"
    )
    return root
