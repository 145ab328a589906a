"""BEIR data sets with a fixed BM25 candidate run, read the way the stand-in's SOURCE.md evaluates them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Candidates:
    """One query and its BM25 candidates, in run order."""

    query_id: str
    query: str
    doc_ids: tuple[str, ...]
    bm25_scores: tuple[float, ...]


@dataclass(frozen=True)
class BeirSet:
    name: str
    docs: dict[str, str]  # doc id -> (title + " " + text).strip(), as BEIR joins them
    qrels: dict[str, dict[str, int]]
    candidates: tuple[Candidates, ...]  # file order of bm25_top100.jsonl

    def first(self, n: int | None) -> tuple[Candidates, ...]:
        """ "First N" means the first N lines of the run file (the SOURCE.md protocol), not N judged queries."""
        return self.candidates if n is None else self.candidates[:n]

    def texts(self, c: Candidates, depth: int | None = None) -> list[str]:
        ids = c.doc_ids if depth is None else c.doc_ids[:depth]
        return [self.docs[d] for d in ids]


def load_set(root: Path, name: str) -> BeirSet:
    """Load `<root>/<name>/{corpus,queries}.jsonl`, `qrels/test.tsv` (CRLF) and `bm25_top100.jsonl`."""
    folder = root / name
    docs: dict[str, str] = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            docs[rec["_id"]] = (rec.get("title", "") + " " + rec.get("text", "")).strip()
    queries: dict[str, str] = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            queries[rec["_id"]] = rec["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as fh:
        next(fh)  # header: query-id corpus-id score
        for line in fh:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 3:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    cands: list[Candidates] = []
    with open(folder / "bm25_top100.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            cands.append(
                Candidates(
                    query_id=rec["query_id"],
                    query=queries[rec["query_id"]],
                    doc_ids=tuple(rec["doc_ids"]),
                    bm25_scores=tuple(float(s) for s in rec["scores"]),
                )
            )
    return BeirSet(name=name, docs=docs, qrels=qrels, candidates=tuple(cands))
