"""Every default of emdcli, defined once and used by both the library and the command line.

The matching defaults were chosen by measurement (docs/benchmarks.md). No heavy imports here:
the command line reads this module to print its help.
"""

from __future__ import annotations

from typing import Literal, get_args

# the values an option may take: each a Literal type (for Typer and mypy) and its tuple -------

DeviceName = Literal["auto", "cpu", "cuda"]
MetricName = Literal["cosine", "l2"]
KshotName = Literal["mean", "sfc"]
FormatName = Literal["table", "csv", "json", "jsonl"]
RerankName = Literal["emd", "emd+global", "none"]
PrecisionName = Literal["fp32", "int8"]
DEVICES: tuple[str, ...] = get_args(DeviceName)
METRICS: tuple[str, ...] = get_args(MetricName)
KSHOT_MODES: tuple[str, ...] = get_args(KshotName)
FORMATS: tuple[str, ...] = get_args(FormatName)
RERANKS: tuple[str, ...] = get_args(RerankName)
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)

# classify ------------------------------------------------------------------------------------

DEVICE = "auto"
#: The bundled model's precision when --precision is not given (any other model runs as named):
#: its int8 variant (weights/efficientnet_lite0_int8), chosen because its accuracy against fp32 stayed
#: within the rule for a default on every set and setting (docs/benchmarks.md, "INT8 backbone: the
#: accuracy it costs").
BUNDLED_PRECISION: PrecisionName = "int8"
#: Images ``export --precision int8`` measures activation ranges on (docs/benchmarks.md, "INT8").
INT8_CALIBRATION_IMAGES = 200

#: How a class with several examples gets its node set: ``"sfc"`` (fitted by SFC) or ``"mean"`` (mean map).
KSHOT = "sfc"
#: Weight of the global (SimpleShot) cosine added to the EMD score of a class matched through one
#: example or the mean feature map of its examples.
GLOBAL_WEIGHT = 0.5
#: The same for a class whose node set was fitted by SFC (the global term lowered its accuracy there).
SFC_GLOBAL_WEIGHT = 0.0
#: Classes whose pooled features are this alike or more (the mean cosine between the classes' mean
#: pooled features, uncentred) get no global term: their global features hardly tell them apart, and
#: the term then costs accuracy (shapes such as glyphs). Chosen on half of each dev set's classes
#: (docs/benchmarks.md, "The global weight chosen per support set").
SIMILAR_CLASSES = 0.55
#: With more classes than this, only the ones closest by global cosine are matched by EMD (0: all).
SHORTLIST = 10
#: A set of queries (a folder, a file list, an episode, a batch task) is matched transductively: the
#: queries move each class's prototype and node set toward where the class lies in their domain
#: (emdcli.matching.transductive). Chosen on half of each dev set's classes (docs/benchmarks.md,
#: "Transductive matching").
TRANSDUCTIVE = True
#: Weight of the global cosine in the transductive rounds, for classes made either way (one example,
#: mean map or SFC); classes that look alike (support similarity >= SIMILAR_CLASSES) get none.
TRANSDUCTIVE_GLOBAL_WEIGHT = 0.5
#: Temperature of the soft assignments of queries to classes.
TRANSDUCTIVE_TEMPERATURE = 10.0
#: Soft k-means rounds before and after the node refit.
TRANSDUCTIVE_ROUNDS = 3
#: The inductive scores are kept when the queries' predictions spread over the classes less than this
#: (normalised entropy of the predicted-class histogram) ... Both limits were chosen on the dev classes
#: by the mean gain over balanced, imbalanced, one-dominated and one-class query sets at 5 and 15
#: queries per class (docs/benchmarks.md, "Transductive matching"): a set mostly of one class is where
#: moving the classes toward the queries cost accuracy.
TRANSDUCTIVE_MIN_SPREAD = 0.7
#: ... and when one class takes more than this many times its even share (1/K) of the predictions.
TRANSDUCTIVE_MAX_SHARE: float | None = 2.5
#: classify matches at most this many queries as one set (about 62 KB of memory each with the bundled
#: model); more are matched in consecutive sets of this size, in input order.
TRANSDUCTIVE_SET = 10_000
#: watch: a file that no close event marks whole (a hard link; on a system other than Linux; with
#: polling) is ready once its size and modification time have stayed the same this many seconds.
WATCH_SETTLE_SECONDS = 0.5
#: watch: an image that cannot be read and was changed less than this many seconds before is tried
#: again once it has stayed unchanged so long (a writer may have paused), before it is reported.
WATCH_UNREADABLE_GRACE = 3.0
#: watch: how often the polling observer looks at the folder (``--poll`` without a value, and when
#: native file events cannot start).
WATCH_POLL_SECONDS = 0.5
#: SFC solves (support images x classes) EMDs per step: above this many, classes use the mean map.
SFC_MAX_PAIRS = 2500
#: Node cost of the matching: ``"cosine"`` (1 - cos, as DeepEMD) or ``"l2"``.
METRIC = "cosine"
#: Ranked classes listed per query.
TOP_K = 2
#: Threads decoding images while the backbone runs; None: one per usable CPU core (chosen by the
#: rates in docs/benchmarks.md, "INT8 backbone: speed").
DECODE_THREADS: int | None = None

# batch ---------------------------------------------------------------------------------------

#: Images handed to a Ray worker at once (one task), at most: the size that kept most of the local
#: engine's rate (docs/benchmarks.md, "Choosing the Ray task size"); a lost worker redoes at most one task.
BATCH_TASK_SIZE = 256
#: ... and at least this many tasks per worker when the input is small, so that no worker idles
#: while another has a long task (docs/benchmarks.md, "Choosing the Ray task size").
BATCH_TASKS_PER_WORKER = 4

# search --------------------------------------------------------------------------------------

#: Hits listed per query.
SEARCH_TOP_K = 5
#: How many of the globally closest gallery images are re-ranked by EMD (0: the whole gallery).
SEARCH_SHORTLIST = 50
#: Re-ranking score: ``"emd+global"`` (measured never worse than global), ``"emd"`` or ``"none"``.
RERANK = "emd+global"
#: Weight of the global cosine added to the EMD score by ``rerank="emd+global"``.
RERANK_GLOBAL_WEIGHT = 1.0

# anomaly -------------------------------------------------------------------------------------

#: Nearest normal images whose dissimilarities are averaged into an anomaly score.
ANOMALY_K = 3
#: Fraction of the normal images a calibrated threshold may flag.
CONTAMINATION = 0.05
#: Fewer normal images than this get a warning that the calibrated threshold is a rough one (how far
#: the share flagged strays: docs/benchmarks.md, "Anomaly detection").
CALIBRATION_IMAGES = 10

# open-set rejection ("none of these") ------------------------------------------------------

#: classify/batch ``--reject``: ``"none"`` (every query gets a class), ``"auto"`` (a threshold
#: calibrated on the support set) or a threshold. Measured in docs/benchmarks.md, "Open-set rejection".
REJECT = "none"
#: ``--sensitivity``: the share of in-set queries ``--reject auto`` is calibrated to reject (and the
#: transductive step's outlier guard to set aside), in [0.01, 0.5].
REJECT_SENSITIVITY = 0.05
#: The answer of a rejected query.
UNKNOWN_LABEL = "unknown"

# evaluate ------------------------------------------------------------------------------------

WAY = 5
SHOT = 1
QUERY = 15
EPISODES = 600
SEED = 0
#: Methods scored when none are named; the first is the baseline of the paired differences.
METHODS = ("proto", "emd", "default")

# train ---------------------------------------------------------------------------------------

#: The first trained block (``blocks.K`` trains blocks K..6 on cached outputs of the blocks before).
TRAIN_FROM = "blocks.6"
#: Training episodes (N-way K-shot tasks of the base classes), with a cosine-decayed learning rate. On
#: icons' held-out base classes the default's accuracy was still rising a little at 1,750-2,000
#: (docs/benchmarks.md, "train: choosing its defaults"); 2,000 take under 3 minutes on 2 cores.
TRAIN_EPISODES = 2000
#: Episode shape of training: classes, examples per class and queries per class.
TRAIN_WAY = 5
TRAIN_SHOT = 1
TRAIN_QUERY = 5
#: Peak learning rate of SGD (Nesterov momentum 0.9, weight decay 5e-4). Of 1e-3, 3e-3, 1e-2 and 3e-2,
#: 1e-2 gave the best held-out accuracy (67.0 against 62.9, 65.5 and 65.8 with one view).
TRAIN_LR = 1e-2
#: Cached views of each image the episodes draw from: centre, flipped, zoomed, zoomed and flipped.
#: More views never raised the held-out accuracy in 2,000 episodes (1e-2: 67.0 with one, 66.2 with
#: two; 1e-3: 62.9, 62.6 and 62.2 with one, two and four), and each costs a pass of the trunk.
TRAIN_VIEWS = 1
#: Held-out base classes for validation: a fraction of the classes (below 1; at least the way) or a count.
VAL_CLASSES = 0.2
#: Validation runs every this many episodes (and before the first and after the last).
VAL_EVERY = 250
#: Fixed validation episodes of the held-out classes (the training shape: way, shot and query).
VAL_EPISODES = 100

# explain -------------------------------------------------------------------------------------

#: How many of the strongest flows a picture draws.
EXPLAIN_LINES = 12


def look_alike(kshot: str, similarity: float | None) -> bool:
    """Whether the default drops the global term of classes made by ``kshot`` (``"mean"`` or ``"sfc"``)
    because their pooled features are ``similarity`` alike (see SIMILAR_CLASSES; None: unknown)."""
    return kshot != "sfc" and similarity is not None and similarity >= SIMILAR_CLASSES


def transductive_weight_for(similarity: float | None) -> float:
    """The global weight of the transductive rounds for classes ``similarity`` alike (None: unknown)."""
    alike = similarity is not None and similarity >= SIMILAR_CLASSES
    return 0.0 if alike else TRANSDUCTIVE_GLOBAL_WEIGHT


def global_weight_for(kshot: str, similarity: float | None = None) -> float:
    """The default global weight for classes whose node sets were made by ``kshot`` (``"mean"`` or
    ``"sfc"``) and whose pooled features are ``similarity`` alike."""
    if kshot == "sfc":
        return SFC_GLOBAL_WEIGHT
    return 0.0 if look_alike(kshot, similarity) else GLOBAL_WEIGHT


# image decoding ---------------------------------------------------------------------------------

#: An image whose shorter side is below this share of the model's input side (56 px of 224) is far
#: too small to say much: it is classified, with a warning, and counted in the summary.
SMALL_IMAGE_SHARE = 0.25

#: Largest image (width x height, pixels) decoded; larger ones are refused as possible decompression
#: bombs. 250 MP is above what cameras and phones make (108-200 MP); ``$EMDCLI_MAX_PIXELS`` changes it.
MAX_PIXELS = 250_000_000
