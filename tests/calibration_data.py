"""Small BEIR folders for the score-calibration tests, and a calibrated copy of an exported test repository.

The tiny test models have random weights, so a folder's relevance labels are drawn from the model's own int8
logits (each query's best-scored candidates relevant, a few others too): the fitted map then has something to
find, as a real model on real judgements would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

WORDS = [
    "berlin",
    "population",
    "trains",
    "spain",
    "museum",
    "art",
    "river",
    "city",
    "people",
    "live",
    "bread",
    "flour",
    "yeast",
    "oven",
    "protein",
    "cell",
    "gene",
    "virus",
    "energy",
    "light",
    "water",
    "salt",
    "coffee",
    "tea",
    "music",
    "film",
    "garden",
    "winter",
    "summer",
]


def copy_repository(source: Path, target: Path) -> Path:
    """A writable copy whose ONNX files are links into the shared test cache (manifests are real copies)."""

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(".onnx"):
            os.symlink(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
    return target


def write_beir(
    folder: Path, *, queries: int = 8, candidates: int = 20, seed: int = 0, run: bool = True
) -> Path:
    """corpus.jsonl, queries.jsonl, bm25_top100.jsonl (each query's candidates) and an empty qrels/test.tsv
    (CRLF, with BEIR's header); `label` fills the qrels."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    corpus, lines, runs = [], [], []
    for q in range(queries):
        qwords = rng.sample(WORDS, 3)
        lines.append({"_id": f"q{q}", "text": " ".join(qwords), "metadata": {}})
        ids = []
        for d in range(candidates):
            doc_id = f"d{q}-{d}"
            words = rng.sample(WORDS, 6) + rng.sample(qwords, rng.randint(0, 3))
            rng.shuffle(words)
            corpus.append({"_id": doc_id, "title": f"t{d}", "text": " ".join(words)})
            ids.append(doc_id)
        runs.append(
            {
                "query_id": f"q{q}",
                "doc_ids": ids,
                "scores": [float(candidates - i) for i in range(candidates)],
            }
        )
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if run:
        (folder / "bm25_top100.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\n")
    return folder


def label(folder: Path, logits: dict[str, list[float]], *, best: int = 3, seed: int = 0) -> None:
    """qrels from the model's logits (keys `folder/query_id`): each query's `best` top-scored candidates and
    one random other are relevant (score 1 or 2, BEIR's graded scale); one candidate is judged 0."""
    rng = random.Random(seed)
    run = {}
    for line in (folder / "bm25_top100.jsonl").read_text().splitlines():
        rec = json.loads(line)
        run[rec["query_id"]] = rec["doc_ids"]
    rows = ["query-id\tcorpus-id\tscore"]
    for query_id, doc_ids in run.items():
        values = logits[f"{folder.name}/{query_id}"]
        order = sorted(range(len(doc_ids)), key=lambda i: -values[i])
        relevant = set(order[:best]) | {rng.choice(order[best:])}
        rows += [f"{query_id}\t{doc_ids[i]}\t{rng.choice((1, 2))}" for i in sorted(relevant)]
        rows.append(f"{query_id}\t{doc_ids[order[-1]]}\t0")
    (folder / "qrels" / "test.tsv").write_text("\r\n".join(rows) + "\r\n")


def labelled_folder(repository: Path, name: str, folder: Path, **options: int) -> Path:
    """A BEIR folder whose labels follow `repository/name`'s own int8 logits."""
    from export.score_calibration import read_beir, score_queries

    write_beir(folder, **options)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\r\n"
        + "".join(f"q{q}\td{q}-0\t1\r\n" for q in range(options.get("queries", 8)))  # judged, for reading
    )
    queries = read_beir(folder)
    label(folder, score_queries(repository, name, queries, "int8"))
    return folder


def calibrated_repository(source: Path, target: Path, data: Path, name: str = "reranker") -> Path:
    """A copy of `source` whose `name` is calibrated on two small labelled folders."""
    from export.score_calibration import calibrate_scores

    repository = copy_repository(source, target)
    folders = [
        labelled_folder(repository, name, data / "alpha", queries=8, seed=1),
        labelled_folder(repository, name, data / "beta", queries=6, seed=2),
    ]
    calibrate_scores(repository, name, folders)
    return repository
