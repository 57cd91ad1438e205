"""``classify --explain-dir``: a picture of each query's match with the closest example of its
predicted class, drawn as the predictions come (``Classifier.predict``'s observer)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .classify import Classifier, SupportSet
    from .prediction import Prediction


def picture_path(folder: Path, query: Path) -> Path:
    """Where ``--explain-dir`` draws ``query``'s match: the query's path (relative to the working
    folder when inside it, else absolute) below ``folder``, under the query's own name when emdcli
    writes pictures of its suffix (.png, .jpg, .jpeg, .webp, in that format), else with ``.png``
    added; so every picture maps back to exactly one query."""
    from ..render.explain import PICTURE_FORMATS

    where = os.path.abspath(query)
    inside = os.path.relpath(where)
    rel = where.lstrip(os.sep) if inside.startswith(os.pardir) else inside
    return folder / (rel if query.suffix.lower() in PICTURE_FORMATS else f"{rel}.png")


class MatchPictures:
    """An observer for ``Classifier.predict``: draws each match into ``folder`` (made now);
    ``drawn`` maps a query's path to its picture's displayed path. A picture that cannot be
    drawn or written is reported through ``warn`` and left out; the prediction stands."""

    def __init__(self, clf: Classifier, support: SupportSet, folder: Path, warn: Callable[[str], None]) -> None:
        self.clf, self.support, self.folder, self.warn = clf, support, folder, warn
        self.drawn: dict[Path, str] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, pred: Prediction, features: Any) -> None:
        from ..errors import EmdcliError
        from ..io.files import display_path
        from ..io.images import model_view
        from ..render.explain import render_match, save_picture

        clf = self.clf
        # A rejected query is drawn against its nearest class, named as such.
        label = (pred.best_class if pred.rejected_as is not None else pred.predicted) or ""
        example, target = clf.closest_example(self.support, features, label)
        shown_as = f"{pred.rejected_as}, nearest {label}" if pred.rejected_as is not None else label
        target_path = picture_path(self.folder, pred.path)
        try:
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shown = render_match(
                model_view(pred.path, clf.source.prep), model_view(example, clf.source.prep), features, target,
                caption=f"{pred.path.name} -> {shown_as} ({example.name})", metric=clf.matcher.metric,
                class_score=pred.score,
            )  # fmt: skip
            save_picture(shown, target_path)
            self.drawn[pred.path] = display_path(target_path)
        except (OSError, EmdcliError) as exc:
            self.warn(f"could not draw {display_path(pred.path)}: {exc}")
