"""Review and correct: a person fixes predictions, the fixes become support examples, and the rest is
re-scored without embedding anything again.

    review = Review.start(Classifier(), Path("support"), sorted(Path("inbox").glob("*.jpg")))
    item = review.items()[0]                      # least certain first
    review.decide(item.id, "correct", "cat")      # copied into support/cat/, the journal says so first
    review.undo()                                 # the copy removed, the query back in the queue

Every decision is appended to a journal beside the support folder (``SUPPORT.review.jsonl``), flushed
to disk, before it is applied; a restart reads it and goes on where it was (a decision whose copy was
cut short is finished). The journal is locked while written, so concurrent tabs or processes do not
interleave lines. Files are only ever written under the support folder, never over an existing file,
and undo removes only a file it placed whose content is unchanged.

Scores are inductive (each query on its own, every class matched: no shortlist) and each class is
matched through the mean map of its examples, so that a correction re-matches one class's column of the
score matrix, not every query against every class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..io.files import display_path
from ..io.folders import read_labelled_folder
from ..io.sorting import candidates, copy_whole, folder_name_problem, same_content
from ..matching.nodes import Nodes
from ..matching.rejection import Rejection
from ..matching.simpleshot import pooled as pooled_of
from ..matching.support import ClassNodes
from .classify import Classifier, Reject
from .prediction import ranking_from_scores

__all__ = ["ACTIONS", "Item", "Journal", "Review", "journal_path", "replay", "suggest", "undo_last"]

#: What a person can say of a query.
ACTIONS = ("accept", "correct", "none", "skip")
#: The suffix of the journal beside a support folder: ``SUPPORT.review.jsonl``.
JOURNAL_SUFFIX = ".review.jsonl"


def journal_path(support: Path) -> Path:
    """Where the journal of ``support`` lives: beside it, ``SUPPORT.review.jsonl``."""
    root = Path(os.path.abspath(support))
    return root.with_name(root.name + JOURNAL_SUFFIX)


class Journal:
    """An append-only JSON Lines file of decisions. ``append`` writes a line whole, flushed and fsynced,
    under an exclusive ``flock`` (so tabs and processes do not interleave), numbering it; ``read``
    drops a last line cut short by a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # cut short by a crash: it was never applied
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "seq" in entry:
                    entries.append(entry)
        return entries

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """``entry`` numbered (``seq``) and timed, on disk before this returns."""
        import fcntl

        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                text = fh.read()
                if text and not text.endswith("\n"):  # a line cut short: end it, so that it is dropped whole
                    fh.write("\n")
                seq = sum(1 for line in text.splitlines() if line.strip()) + 1
                line = {"seq": seq, "time": round(time.time(), 3), **entry}
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return line


@dataclass(frozen=True)
class Item:
    """A query waiting for a decision, as the page shows it.

    id: its place in the review's queries. confidence: of the best class, in [0, 1]; margin: that minus
    the runner-up's (small: uncertain). rejected: open-set rejection judges it none of the classes.
    """

    id: int
    path: str
    predicted: str
    confidence: float
    runner_up: str | None
    margin: float
    rejected: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "predicted": self.predicted, "confidence": round(self.confidence, 4),
                "runner_up": self.runner_up, "margin": round(self.margin, 4), "rejected": self.rejected}  # fmt: skip


def effective(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decisions of a journal that stand: each ``undo`` takes back the one it names."""
    undone = {e["undoes"] for e in entries if e.get("action") == "undo"}
    return [e for e in entries if e.get("action") in ACTIONS and e["seq"] not in undone]


@dataclass
class Review:
    """A review of ``queries`` against the support folder ``root``; see the module docstring.

    Made by :meth:`start`. ``examples``: class -> [(path, (C, H, W) map)], the support set as it stands;
    ``maps``: the queries' maps (None for an unreadable one); ``decided``: query id -> its standing
    decision (journal entry).
    """

    clf: Classifier
    root: Path
    queries: list[Path]
    maps: list[np.ndarray | None]
    examples: dict[str, list[tuple[Path, np.ndarray]]]
    journal: Journal
    reject: Reject | None = None
    decided: dict[int, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _nodes: ClassNodes | None = field(default=None, repr=False)
    _emd: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _query_nodes: list[Nodes | None] = field(default_factory=list, repr=False)
    #: (n, C) the queries' pooled features (zeros for an unreadable one), computed once.
    _pooled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _weight: float = field(default=0.0, repr=False)
    _rejection: Rejection | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        clf: Classifier,
        root: Path,
        queries: Sequence[Path],
        *,
        reject: Reject | None = None,
        journal: Path | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> Review:
        """Read the journal (finishing a decision a crash cut short), embed the support folder and the
        queries (through the feature cache), and score them."""
        # each class through the mean map of its examples, every class matched, each query on its own: a
        # correction then changes one class's node set and one column of scores (with SFC, every class's
        # node set changes when one class gets a second example: docs/benchmarks.md, "review")
        matcher = dataclasses.replace(clf.matcher, kshot="mean", shortlist=0, transductive=False)
        clf = Classifier(clf.source, matcher, clf.bank)
        log = Journal(journal or journal_path(root))
        standing = effective(log.read())
        for entry in standing:  # a copy the crash cut short is finished now
            _finish_placement(root, entry)
        support = clf.fit(read_labelled_folder(root), on_done, keep_examples=True)
        examples = {name: list(ex) for name, ex in support.examples.items()}
        paths = [Path(q) for q in queries]
        maps: list[np.ndarray | None] = [e.features for e in clf.source.embed_cached(paths, on_done)]
        review = cls(clf, root, paths, maps, examples, log, reject)
        texts = {display_path(q): i for i, q in enumerate(paths)}
        for entry in standing:
            if entry["query"] in texts:
                review.decided[texts[entry["query"]]] = entry
        review._query_nodes = [None if m is None else Nodes.from_feature_map(m) for m in maps]
        shape = next((m.shape[0] for m in maps if m is not None), 0)
        review._pooled = (
            np.stack([np.zeros(shape) if m is None else pooled_of(m) for m in maps]) if maps else np.zeros((0, 0))
        )
        review._refit(changed=None)
        return review

    # the scores ---------------------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[str, ...]:
        assert self._nodes is not None
        return self._nodes.classes

    def _refit(self, changed: set[str] | None) -> None:
        """New node sets from :attr:`examples`; re-match the columns of the classes whose node set changed
        (``changed`` None: every class), every query's maps kept from before."""
        names = sorted(n for n, ex in self.examples.items() if ex)
        old = self._nodes
        nodes = self.clf.matcher.fit([np.stack([m for _, m in self.examples[n]]) for n in names], names)
        k = len(names)
        emd = np.full((len(self.maps), k), np.nan)
        redo = set(range(k))
        if old is not None and changed is not None and old.classes == nodes.classes:
            for j, name in enumerate(names):
                same = np.array_equal(old.nodes[j].raw, nodes.nodes[j].raw)
                if same and name not in changed:
                    emd[:, j] = self._emd[:, j]
                    redo.discard(j)
        if redo:
            only, matcher = np.array(sorted(redo)), self.clf.matcher
            for i, q in enumerate(self._query_nodes):
                if q is not None:
                    emd[i, only] = nodes.bank.scores(q, matcher.metric, only=only, weighting=matcher.weighting)[only]
        self._nodes, self._emd, self._weight = nodes, emd, self.clf.matcher.weight_for(nodes)
        self._rejection = self.clf.open_set(nodes, self.reject)[0]

    def _ranked(self, i: int) -> tuple[Any, float | None]:
        """Query ``i``'s ranking and its open-set score (None without rejection)."""
        assert self._nodes is not None and self.maps[i] is not None
        pooled = self._pooled[i]
        scores = self._emd[i] + self._weight * self._nodes.global_cosine(pooled)
        rejection = self._rejection
        open_score = None if rejection is None else float(rejection.scores(pooled[None])[0])
        return ranking_from_scores(list(self._nodes.classes), scores), open_score

    def items(self) -> list[Item]:
        """The queries left to decide, least certain first (by margin)."""
        with self._lock:
            out = []
            for i, path in enumerate(self.queries):
                if i in self.decided or self.maps[i] is None:
                    continue
                ranking, open_score = self._ranked(i)
                top, second = ranking[0], ranking[1] if len(ranking) > 1 else None
                rejected = self._rejection is not None and self._rejection.rejects(open_score)
                margin = top.confidence - (second.confidence if second else 0.0)
                out.append(Item(i, display_path(path), top.label, top.confidence, second.label if second else None,
                                margin, rejected))  # fmt: skip
            return sorted(out, key=lambda it: (it.margin, it.id))

    def suggest(self, n: int, items: Sequence[Item] | None = None) -> list[int]:
        """Which ``n`` queries to label next: :func:`suggest` over the items left (``items``: as
        :meth:`items` just gave them, so that they are not ranked twice)."""
        with self._lock:
            items = self.items() if items is None else items
            return suggest(items, {it.id: self._pooled[it.id] for it in items}, n)

    # decisions ----------------------------------------------------------------------------------------

    def decide(self, query_id: int, action: str, label: str | None = None) -> dict[str, Any]:
        """Say ``action`` of query ``query_id``: ``accept`` its prediction, ``correct`` it to ``label`` (a
        class, or a new one), ``none`` (none of the classes), ``skip``. The journal says so first; then an
        accepted or corrected image is copied into ``root/label/`` under a free name and the classes are
        refitted. UsageError for a query already decided, an unknown action or a label that cannot be a
        folder name. The journal entry."""
        with self._lock:
            if action not in ACTIONS:
                raise UsageError(f"unknown action {action!r}", hint=f"one of {', '.join(ACTIONS)}")
            if not 0 <= query_id < len(self.queries) or self.maps[query_id] is None:
                raise UsageError(f"no query {query_id} to decide")
            if query_id in self.decided:
                raise UsageError(f"query {query_id} is decided already", hint="undo it first")
            source = self.queries[query_id]
            placed = None
            if action == "accept":
                label = self._ranked(query_id)[0][0].label
            if action in ("accept", "correct"):
                problem = folder_name_problem(label or "")
                if not problem and (label or "").startswith("."):
                    problem = "a hidden folder is not read as a class"
                if problem:
                    raise UsageError(f"cannot use {label!r} as a class: {problem}")
                folder = self.root / str(label)
                placed = next(p for p in candidates(folder, source.name) if not os.path.lexists(p))
            else:
                label = None
            where = None if placed is None else str(placed.relative_to(self.root))
            entry = self.journal.append({"action": action, "query": display_path(source), "label": label,
                                         "placed": where})  # fmt: skip
            if placed is not None:
                _finish_placement(self.root, entry)
                self.examples.setdefault(label or "", []).append((placed, np.asarray(self.maps[query_id])))
                self._refit({label or ""})
            self.decided[query_id] = entry
            return entry

    def undo(self) -> dict[str, Any] | None:
        """Take back the last standing decision (:func:`undo_last`) and refit the classes; the query is
        back in the queue. None when nothing is left to undo."""
        with self._lock:
            undone = undo_last(self.root, self.journal)
            if undone is None:
                return None
            last, entry = undone
            if last.get("placed"):
                target = self.root / last["placed"]
                label = last["label"]
                self.examples[label] = [(p, m) for p, m in self.examples.get(label, []) if p != target]
                self._refit({label})
            for qid, decided in list(self.decided.items()):
                if decided["seq"] == last["seq"]:
                    del self.decided[qid]
            return entry


def undo_last(root: Path, journal: Journal) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Take back the last standing decision of ``journal``: the journal says so first, then a file it
    placed under ``root`` is removed, only when its content is still the query's. (the decision undone,
    the undo entry), or None when nothing is left to undo. Needs no model: ``emdcli review --undo``."""
    standing = effective(journal.read())
    if not standing:
        return None
    last = standing[-1]
    entry = journal.append({"action": "undo", "undoes": last["seq"], "query": last["query"]})
    if last.get("placed"):
        target, source = root / last["placed"], Path(last["query"])
        with contextlib.suppress(OSError):
            if target.is_file() and source.is_file() and same_content(source, target):
                target.unlink()
    return last, entry


def replay(root: Path, journal: Journal) -> int:
    """Apply every standing decision of ``journal`` to the support folder ``root`` again: each accepted or
    corrected image copied where its entry says, unless it is there. How many were copied now. Needs no
    model: ``emdcli review --replay`` (after restoring the folder from a backup, say)."""
    copied = 0
    for entry in effective(journal.read()):
        if entry.get("placed") and not os.path.lexists(root / entry["placed"]):
            _finish_placement(root, entry)
            copied += os.path.lexists(root / entry["placed"])
    return copied


def _finish_placement(root: Path, entry: dict[str, Any]) -> None:
    """Copy an accepted or corrected query to where its journal entry says, unless it is there already
    (a restart after a crash between the journal and the copy)."""
    if not entry.get("placed"):
        return
    target, source = root / entry["placed"], Path(entry["query"])
    if os.path.lexists(target) or not source.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_whole(source, target)


def suggest(items: Sequence[Item], pooled: dict[int, np.ndarray], n: int) -> list[int]:
    """``n`` item ids to label next: the 3n least certain (by margin), spread by a greedy k-center over
    their pooled features (centred, unit length) starting from the least certain, so that the picks are
    uncertain and unlike one another."""
    pool = sorted(items, key=lambda it: (it.margin, it.id))[: 3 * n]
    if len(pool) <= n:
        return [it.id for it in pool]
    x = np.stack([pooled[it.id] for it in pool]).astype(np.float64)
    x -= x.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    chosen = [0]
    far = 1.0 - x @ x[0]
    while len(chosen) < n:
        pick = int(np.argmax(far))
        chosen.append(pick)
        far = np.minimum(far, 1.0 - x @ x[pick])
        far[chosen] = -np.inf
    return [pool[c].id for c in chosen]
