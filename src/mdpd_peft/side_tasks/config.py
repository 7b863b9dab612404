"""Configuration of a kept side-network task: one named task of a frozen encoder, served beside the others."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft.config import PeftConfig
from peft.utils import PeftType
from peft.utils.constants import DUMMY_TARGET_MODULES

from ..config import SideNetworkSettings, invalid, is_integer, is_real
from ..enum_extension import add_str_enum_member

add_str_enum_member(PeftType, "SIDE_TASK")

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression", "token_classification")
HEAD_INPUTS = ("gated", "side")
HEAD_INITS = ("probe", "random")
POOLINGS = ("mean", "first", "first_and_mean", "attention")
CACHEABLE_SIDE_NETWORKS = ("ladder", "unipt")  # the others re-run backbone layers on their own states
# Kept side networks are served, many at a time: their defaults are chosen from accuracy and serving cost together
# (benchmarks/RESULTS.md, "Kept side networks"). Half LST's width (r = 16) and heads at least 16 wide (LST's r = 8
# ladder on MiniLM has 12 heads of 4, whose softmax costs as much as the encoder's own) cost about a third of LST's
# ladder per task served, at the same accuracy on three text tasks.
KEPT_REDUCTION_FACTOR = 16
KEPT_SIDE_HEAD_DIM = 16


@dataclass
class SideTaskConfig(SideNetworkSettings, PeftConfig):
    """Configuration of a side-network task kept at inference (``get_peft_model(encoder, SideTaskConfig(...))``).

    A side network (``side_network``, by default the LST ladder; see ``SideNetworkSettings``) reads the frozen
    encoder's states and a head of its own predicts the task. Nothing in the encoder changes, so every task of a
    ``PeftModel`` (one adapter per task) is served from one encoder pass, and a new task can train on cached
    encoder states (``build_state_cache``) without the encoder in the loop. The base model is the bare encoder
    (``AutoModel``: ``BertModel``, ``Dinov2Model``, ...); each task brings its own labels.

    Args:
        num_labels: The head's outputs. ``None`` takes it from ``id2label`` (1 for regression).
        id2label: Class index -> label name, as in transformers' configs; ``None`` names them ``LABEL_<i>``.
        problem_type: ``"single_label_classification"`` (cross-entropy), ``"multi_label_classification"``
            (a sigmoid per label, binary cross-entropy), ``"regression"`` (one output, MSE) or
            ``"token_classification"`` (a label per token, -100 ignored), as transformers' heads.
        head_input: What the head reads. ``"gated"`` (default; QST, arXiv 2401.07159): the side network's final
            state up-projected to the encoder's width and mixed per channel with the encoder's own final
            representation through a learned sigmoid gate, ``h = g * Up(s) + (1 - g) * b``, so the head always sees
            what a linear probe sees. ``"side"`` (LST): the side network's final state alone.
        head_gate_init: Initial logit of that gate, per channel: ``0.0`` starts at an even mix; a negative value
            starts near the encoder's representation (``-4``: g = 0.018), i.e. near a linear probe.
        head_init: How ``SideTaskTrainer`` starts the head's classifier. ``"random"`` (default): ``nn.Linear``'s random
            init. ``"probe"``: before the first step the trainer fits the classifier to an L2-regularised logistic
            regression on what it reads for the training set (with the gate shut, ``head_gate_init=-4``, the encoder's
            pooled representation: the linear probe, at scikit-learn's ``LogisticRegression()`` penalty on unit-norm
            features, SetFit's head), one forward pass over the training set, so training starts from the probe
            (LP-FT, Kumar et al. 2022). Single-label classification only. Meant for few labels per class
            (``benchmarks/few_shot.py`` measures it).
        pooling: How a sequence-level head pools tokens: ``"mean"`` over real tokens (sentence encoders),
            ``"first"`` (the CLS token, as ViT classifiers) or ``"first_and_mean"`` (the CLS token beside the mean of
            the other tokens, as DINOv2's classifier reads them: twice as wide) or ``"attention"``: a weighted mean over
            real tokens, its weights a softmax of a learned query's product with each token's final encoder state (one
            vector of the encoder's width; zeros at the start, i.e. mean pooling), for labels that hang on a few words
            (a question's wh-word) which the mean dilutes. Token classification does not pool.
        label_smoothing: Label smoothing of the cross-entropy (single-label and token classification), in [0, 1).
        feature_distillation: Train the side network also on MDPD's backbone -> side path (mdpd-paper.txt Eq. 1-7,
            with ``MDPDConfig``'s defaults: imitation of the shallow layers' states through a rank-16 aligner,
            masked generation of the deep layers' at lambda = 0.5, weights 4e-5 and 6e-5): the encoder's own states
            teach the side network's, a regulariser of a network trained on few labels. Its modules train and save
            with the task; serving does not run them.
        reduction_factor: As in ``SideNetworkSettings``, but 16 by default here (LST's and MDPD's 8 gives a ladder
            twice as wide, about three times the serving cost, at no measured accuracy gain).
        side_head_dim: As in ``SideNetworkSettings``, but 16 by default here (LST's ``None`` keeps the backbone's head
            count, 4-wide heads at r = 8, which cost several times their FLOPs when served). Tasks saved before this
            setting existed load with ``None``, the heads they were trained with.
        encoder_fingerprint: Filled in when the task is attached and saved with it: the encoder's layer count,
            widths and a hash of its weights. Attaching the task to another encoder then fails before anything
            changes. Leave it ``None``.
    """

    num_labels: Optional[int] = field(default=None, metadata={"help": "Outputs of the task head; None = len(id2label)."})
    id2label: Optional[dict[int, str]] = field(default=None, metadata={"help": "Class index -> label name."})
    problem_type: str = field(default="single_label_classification", metadata={"help": f"One of {PROBLEM_TYPES}."})
    head_input: str = field(default="gated", metadata={"help": f"What the head reads: one of {HEAD_INPUTS}."})
    head_gate_init: float = field(default=0.0, metadata={"help": "Initial logit of the head's per-channel gate (gated head)."})
    head_init: str = field(default="random", metadata={"help": f"How SideTaskTrainer starts the head's classifier: one of {HEAD_INITS}."})
    pooling: str = field(default="mean", metadata={"help": f"Token pooling of sequence-level heads: one of {POOLINGS}."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the cross-entropy, in [0, 1)."})
    feature_distillation: bool = field(default=False, metadata={"help": "Also train on MDPD's feature distillation (Eq. 1-7)."})
    reduction_factor: int = field(default=KEPT_REDUCTION_FACTOR, metadata={"help": "Side width = hidden size / reduction_factor."})
    side_head_dim: Optional[int] = field(default=KEPT_SIDE_HEAD_DIM, metadata={"help": "Ladder: width of each side attention head; None = the backbone's head count."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=DUMMY_TARGET_MODULES, metadata={"help": "Fixed: a side task wraps no module of the encoder."}
    )
    encoder_fingerprint: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Filled in at attach time (layers, widths, weights hash); checked when reloading."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.SIDE_TASK
        self.target_modules = DUMMY_TARGET_MODULES
        if isinstance(self.id2label, dict):  # JSON turns the keys into strings
            self.id2label = {int(index): str(label) for index, label in self.id2label.items()}
        if self.num_labels is None:
            self.num_labels = 1 if self.problem_type == "regression" else len(self.id2label or {}) or None
        self.check_values()
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}

    @classmethod
    def check_kwargs(cls, **kwargs):
        """A saved task's settings: one saved before ``side_head_dim`` existed was trained with LST's head count."""
        kwargs = super().check_kwargs(**kwargs)
        kwargs.setdefault("side_head_dim", None)
        return kwargs

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in self.id2label.items()}

    @property
    def per_token(self) -> bool:
        return self.problem_type == "token_classification"

    def check_values(self) -> None:
        """Checks the settings that do not depend on the encoder."""
        self.check_side_network_values()
        owner = type(self).__name__
        for name, allowed in (("problem_type", PROBLEM_TYPES), ("head_input", HEAD_INPUTS), ("head_init", HEAD_INITS), ("pooling", POOLINGS)):
            if getattr(self, name) not in allowed:
                raise invalid(name, getattr(self, name), f"one of {allowed}", owner)
        if not (is_integer(self.num_labels) and self.num_labels >= 1):
            raise invalid("num_labels", self.num_labels, "an integer >= 1, or id2label given", owner)
        if self.problem_type == "regression" and self.num_labels != 1:
            raise invalid("num_labels", self.num_labels, "1 with problem_type='regression'", owner)
        if self.id2label is not None and sorted(self.id2label) != list(range(self.num_labels)):
            raise invalid("id2label", self.id2label, f"a label name for each class index 0..{self.num_labels - 1} (num_labels={self.num_labels})", owner)
        if self.id2label is not None and len(set(self.id2label.values())) != len(self.id2label):
            raise invalid("id2label", self.id2label, "distinct label names", owner)
        if not is_real(self.head_gate_init):
            raise invalid("head_gate_init", self.head_gate_init, "a finite float", owner)
        if not isinstance(self.feature_distillation, bool):
            raise invalid("feature_distillation", self.feature_distillation, "True or False", owner)
        if not (is_real(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
            raise invalid("label_smoothing", self.label_smoothing, "a float in [0, 1)", owner)
