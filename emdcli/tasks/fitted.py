"""A fitted support set as one file: fit once, then classify many times, anywhere.

    clf = Classifier()
    folder = read_labelled_folder(Path("support"))
    save_fitted(Path("animals.emdfit"), clf.fit(folder), clf, folder)
    fitted = load_fitted(Path("animals.emdfit"), clf)    # no image embedded
    predictions = clf.predict(fitted.support, [Path("query.jpg")])

The file is a NumPy ``.npz`` archive of plain arrays and one JSON text (no pickle: loading a file
from someone else executes nothing): the model's name and sha256, the matching settings the node
sets were made with, the class names and shots, each class's node set (as fitted: the mean map or
SFC's), the pooled features behind the global and transductive terms and open-set rejection, and
where each example came from (path and sha256 of the file). Open-set rejection is calibrated again
on load from these, with the model's reference bank, so it is the same as the folder's. A file made
for another model, or by another version of this format, is refused.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..io.files import AtomicFile, sha256_file
from ..io.folders import ClassFolder, LabelledFolder
from ..matching.nodes import Nodes
from ..matching.support import ClassNodes
from .classify import Classifier, Reject, SupportSet

#: The suffix of a fitted file.
SUFFIX = ".emdfit"
#: What the file's ``format`` says; and its version, refused when it differs.
FORMAT = "emdcli-fitted-support"
FORMAT_VERSION = 1
#: The matching settings the node sets were made with; a matcher that differs in one cannot use them.
FITTED_SETTINGS = ("metric", "kshot", "weighting", "sfc_max_pairs")


def is_fitted_file(path: Path) -> bool:
    """Whether ``path`` names a fitted file (by its suffix) rather than a support folder."""
    return path.suffix == SUFFIX and not path.is_dir()


@dataclass(frozen=True)
class Fitted:
    """A fitted file read back: the support set, the folder its examples came from (as recorded), and
    the file's description (``meta``: the JSON part)."""

    support: SupportSet
    folder: LabelledFolder
    meta: dict[str, Any]


def save_fitted(path: Path, support: SupportSet, clf: Classifier, folder: LabelledFolder) -> Path:
    """Write ``support`` (fitted by ``clf`` from ``folder``) to ``path``, atomically; returns ``path``."""
    nodes = support.nodes
    manifest = getattr(clf.source.extractor, "manifest", None)
    by_class = {c.name: c.files for c in folder.classes}
    skipped = {s.path for s in support.skipped}
    examples = [{"class": name, "path": os.path.abspath(p), "sha256": sha256_file(p)}
                for name in nodes.classes for p in by_class.get(name, ()) if p not in skipped]  # fmt: skip
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "emdcli": __version__,
        "model": {"name": getattr(manifest, "name", "unnamed"), "sha256": getattr(manifest, "sha256", "unknown"),
                  "precision": getattr(manifest, "precision", None), "preprocess": _preprocess_key(manifest)},
        "matcher": {k: getattr(clf.matcher, k) for k in FITTED_SETTINGS},
        "root": os.path.abspath(folder.root), "classes": list(nodes.classes), "shots": list(nodes.shots),
        "made_by": nodes.kshot,
        "similarity": nodes.similarity, "empty_classes": list(support.empty_classes),
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in support.skipped], "examples": examples,
        "rejection_anchor": None if support.outliers is None else support.outliers.anchor,
    }  # fmt: skip
    arrays: dict[str, Any] = {
        "nodes": np.stack([n.raw for n in nodes.nodes]), "centre": nodes.centre, "centroids": nodes.centroids,
        "examples_pooled": nodes.examples_pooled, "example_labels": nodes.example_labels, "map_sums": nodes.map_sums,
    }  # fmt: skip
    out = AtomicFile(path, binary=True)
    try:
        np.savez(out.stream, meta=np.array(json.dumps(meta)), **arrays)  # uncompressed: inflating was most of a load
    except BaseException:
        out.abort(keep=False)
        raise
    return out.commit()


def read_meta(path: Path) -> dict[str, Any]:
    """The JSON part of a fitted file, its format checked. UsageError for anything else."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a fitted support file of emdcli ({exc})",
                         hint="make one with: emdcli fit SUPPORT_FOLDER -o FILE.emdfit") from None  # fmt: skip
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"{path} is not a fitted support file of emdcli", hint="emdcli fit SUPPORT_FOLDER -o FILE")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"{path} is format version {meta.get('format_version')} of fitted files (emdcli {meta.get('emdcli')}); "
            f"this emdcli reads version {FORMAT_VERSION}",
            hint="fit the support folder again with this emdcli",
        )
    return meta


def load_fitted(path: Path, clf: Classifier, reject: Reject | None = None, *, keep_examples: bool = False) -> Fitted:
    """The support set saved in ``path``, for ``clf`` (whose model and matching settings must be those it
    was fitted with: UsageError otherwise), with ``reject``'s rejection calibrated as :meth:`Classifier.fit`
    does it. keep_examples: also each example's feature map, as ``fit(keep_examples=True)`` keeps them (to
    draw matches): the examples are read from where the file recorded them (through the feature cache),
    and DatasetError says which one is gone or changed since."""
    meta = read_meta(path)
    manifest = getattr(clf.source.extractor, "manifest", None)
    model = meta["model"]
    if model["sha256"] != getattr(manifest, "sha256", None):
        raise UsageError(
            f"{path.name} was fitted with the model {model['name']} (sha256 {model['sha256'][:12]}...), not "
            f"{getattr(manifest, 'name', 'this one')}",
            hint=f"pass the model it was made with (`model` {model['name']}), or fit the folder again",
        )
    made_with, now = model.get("preprocess"), _preprocess_key(manifest)
    if made_with != now:  # the nodes came from other pixels: the rows would differ from the folder's
        raise UsageError(
            f"{path.name} was fitted by emdcli {meta.get('emdcli')}, whose image preprocessing "
            f"({made_with or 'not recorded: emdcli 0.2.0 or older'}) differs from this one's ({now})",
            hint="fit the support folder again with this emdcli: emdcli fit SUPPORT_FOLDER -o FILE.emdfit",
        )
    for key, value in meta["matcher"].items():
        if getattr(clf.matcher, key) != value:
            raise UsageError(f"{path.name} was fitted with {key} {value}, not {getattr(clf.matcher, key)}",
                             hint=f"leave out the option that sets {key}, or fit the folder again with it")  # fmt: skip
    try:
        with np.load(path, allow_pickle=False) as z:
            names = ("nodes", "centre", "centroids", "examples_pooled", "example_labels", "map_sums")
            arrays = {k: z[k] for k in names}
        nodes = ClassNodes(
            tuple(meta["classes"]), tuple(Nodes.from_feature_map(n) for n in arrays["nodes"]), tuple(meta["shots"]),
            arrays["centre"], arrays["centroids"], meta["made_by"], meta["similarity"],
            examples_pooled=arrays["examples_pooled"], example_labels=arrays["example_labels"],
            map_sums=arrays["map_sums"],
        )  # fmt: skip
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path} is damaged ({exc})", hint="fit the support folder again") from None
    rejection, outliers = clf.open_set(nodes, reject)
    examples = _examples(clf, meta) if keep_examples else {}
    support = SupportSet(nodes=nodes, empty_classes=tuple(meta["empty_classes"]), examples=examples,
                         rejection=rejection, outliers=outliers, weights=clf.matcher.weights_for(nodes))  # fmt: skip
    return Fitted(support, recorded_folder(meta), meta)


def _preprocess_key(manifest: Any) -> str | None:
    """The key of ``manifest``'s preprocessing (:meth:`~emdcli.io.images.Preprocess.key`: the decoding and
    resizing code's version, the input size and normalisation), or None for an extractor without one."""
    prep = getattr(manifest, "preprocess", None)
    return None if prep is None else str(prep.key())


def _examples(clf: Classifier, meta: dict[str, Any]) -> dict[str, tuple[tuple[Path, np.ndarray], ...]]:
    """class -> (path, (C, H, W) feature map) of each recorded example, its content checked first."""
    from ..errors import DatasetError

    recorded = [(e["class"], Path(e["path"]), e["sha256"]) for e in meta["examples"]]
    for _, where, digest in recorded:
        try:
            same = sha256_file(where) == digest
        except OSError:
            same = False
        if not same:
            raise DatasetError(f"the example {where} is gone or has changed since the fitted file was made",
                               hint="fit the support folder again, or give the folder itself")  # fmt: skip
    label = {where: name for name, where, _ in recorded}
    found: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for item in clf.source.embed_cached([where for _, where, _ in recorded]):
        if item.features is not None:
            found.setdefault(label[item.path], []).append((item.path, item.features))
    return {name: tuple(sorted(kept, key=lambda e: str(e[0]))) for name, kept in found.items()}


def recorded_folder(meta: dict[str, Any]) -> LabelledFolder:
    """The support folder as the file recorded it (the files need not exist any more)."""
    files: dict[str, list[Path]] = {}
    for e in meta["examples"]:
        files.setdefault(e["class"], []).append(Path(e["path"]))
    classes = tuple(ClassFolder(name, tuple(files.get(name, ()))) for name in meta["classes"])
    return LabelledFolder(Path(meta["root"]), classes, tuple(meta["empty_classes"]), ())


def support_folder(path: Path) -> LabelledFolder:
    """The labelled folder SUPPORT names: the folder itself, or the one a fitted file recorded (its files
    need not exist any more). UsageError (DatasetError) for a path that is neither."""
    from ..io.folders import read_labelled_folder

    return recorded_folder(read_meta(path)) if is_fitted_file(path) else read_labelled_folder(path)


def fit_or_load(
    clf: Classifier,
    path: Path,
    folder: LabelledFolder,
    on_done: Callable[[int], None] | None = None,
    *,
    reject: Reject | None = None,
    keep_examples: bool = False,
) -> SupportSet:
    """The support set of SUPPORT ``path`` for ``clf``: loaded from a fitted file, else ``folder`` (what
    :func:`support_folder` read) fitted, ``on_done`` told of each example embedded."""
    if is_fitted_file(path):
        return load_fitted(path, clf, reject, keep_examples=keep_examples).support
    return clf.fit(folder, on_done, keep_examples=keep_examples, reject=reject)
