"""A search space: per-block choices the controller samples, read from ``search_spaces/*.yaml``."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from autocomp._loader import build, read_yaml
from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops import LowRank, PruneHeads, PruneMlp, Quantize, ReduceTokens
from autocomp.ops.lowrank import refusal
from autocomp.ops.quantize import ACT_BITS, WEIGHT_BITS, check_layers
from autocomp.recipe import Distill, Recipe

__all__ = ["SearchSpace", "load_space", "heads_kept", "setting_label", "STATIC", "STATIC_BITS"]

FLOAT_BITS = 32
RANK = "#rank"  # suffix of an ordered knob's Optuna parameter: the rank of its choice, smallest first
STATIC_BITS = 8  # the weight bit-width static activations (``act_bits``) come with: they run for real only beside it
STATIC = ("act_bits", STATIC_BITS)  # the setting "8-bit weights, static activations" of the passes before a search
# the knobs a block's own choices (``blocks``) may narrow, each keeping the space's least compressing choice
BLOCK_KNOBS = ("heads_keep", "mlp_keep", "rank", "tokens_keep", "weight_bits")


@dataclass(frozen=True)
class SearchSpace:
    """Choices sampled independently for every transformer block. A knob with a single choice is not searched.

    Attributes:
        heads_keep: fractions of each block's heads to keep (rounded, at least one head).
        mlp_keep: fractions of each block's MLP hidden neurons to keep.
        rank: fractions of full rank kept by low-rank factorization of the block's Linears (1.0 = not factored).
        tokens_keep: fractions of tokens kept after the block (1.0 = no reduction).
        weight_bits: weight bit-widths; 32 leaves the block in fp32.
        quantize_layers: which Linears of a block a quantized block quantizes: ``all``, or names joined by commas
            (``qkv,fc1``: int8 qkv and fc1, fp32 proj and fc2), as :class:`~autocomp.ops.Quantize`'s ``layers``.
        act_bits: the activations of a block with 8-bit weights, as :class:`~autocomp.ops.Quantize`'s ``act_bits``:
            ``null`` (dynamic: the int8 kernel quantizes each batch's inputs as it runs) or ``8`` (static: one scale
            per layer input, calibrated on the calibration images; no per-batch range to find, and runtimes fuse
            it into the GEMM). Blocks at other bit-widths keep float activations: static activations run for real
            only beside 8-bit weights. Offered both, the passes before the search score static activations as a
            setting of their own (``STATIC``) and 8-bit weights otherwise with dynamic ones (:meth:`first_act`).
        smooth: the SmoothQuant migration strength of every block with 8-bit weights, as
            :class:`~autocomp.ops.Quantize`'s ``smooth`` (null: none). Not searched: folded into the LayerNorms, it
            costs nothing at run time; it moves the outlier channels of pretrained ViTs' LayerNorm outputs into the
            weights, so that int8 activations (dynamic or static) keep their resolution.
        group_size: input weights sharing one scale in every block with 2-6 bit weights, as
            :class:`~autocomp.ops.Quantize`'s ``group_size`` (not searched): smaller groups keep more accuracy and
            hold more scales (one fp16 scale per group).
        head_importance: how heads are scored (``autocomp.importance.HEAD_SCORES``).
        token_method: ``merge`` (ToMe) or ``prune`` (EViT).
        lowrank_method: ``svd`` or ``whitened``.
        lowrank_layers: which Linears of a block a ``rank`` below 1 factorizes (not searched), as
            :class:`~autocomp.ops.LowRank`'s ``layers``: a rank fraction that saves nothing on a square layer
            (``proj``: 0.5 and above) still saves on the wider ``qkv``, ``fc1`` and ``fc2`` when ``proj`` is left out.
        distill_steps: distillation steps after compression (0 = no distillation). With several values the sampler
            picks per candidate; distillation changes no deployed cost, only the trial's time, so offering 0 beside
            a positive count spends trials on candidates worse at the same cost.
        distill_alpha: weights of the distillation term against the labels' cross-entropy.
        distill_temperature: softmax temperature of the distillation term.
        uniform: one choice per knob for every block alike (a uniform setting, still searched), instead of one per
            block.
        blocks: some blocks' own choices, narrower than the space's: ``{0: {weight_bits: [32]}, "-2..-1":
            {tokens_keep: [1.0]}}`` (a block index, negative from the last, or an inclusive range ``a..b``), each
            list some of the space's own choices of that knob (:data:`BLOCK_KNOBS`), its least compressing one
            among them: a block is held back from compression, never forced into it (every pass before the search,
            the reach checks and the starting points build the least compressing candidate of each block).
            :meth:`for_depth` resolves the indices against a model; the passes before the search may narrow them
            further.
    """

    heads_keep: tuple[float, ...] = (1.0,)
    mlp_keep: tuple[float, ...] = (1.0,)
    rank: tuple[float, ...] = (1.0,)
    tokens_keep: tuple[float, ...] = (1.0,)
    weight_bits: tuple[int, ...] = (FLOAT_BITS,)
    quantize_layers: tuple[str, ...] = ("all",)
    act_bits: tuple[int | None, ...] = (None,)
    smooth: float | None = 0.5
    group_size: int = 64
    head_importance: str = "output_norm"
    token_method: str = "merge"
    lowrank_method: str = "svd"
    lowrank_layers: tuple[str, ...] = LowRank.layers
    distill_steps: tuple[int, ...] = (0,)
    distill_alpha: tuple[float, ...] = (0.5,)
    distill_temperature: float = 4.0
    uniform: bool = False
    blocks: Mapping[Any, Mapping[str, Sequence[Any]]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("heads_keep", "mlp_keep", "rank", "tokens_keep", "weight_bits", "quantize_layers", "act_bits",
                     "lowrank_layers", "distill_steps", "distill_alpha"):
            if isinstance(getattr(self, name), str):  # not a list of its letters; the loader names the type wanted
                raise TypeError(f"{name} must be a list of choices, got {getattr(self, name)!r}")
            if isinstance(getattr(self, name), Mapping):  # its keys were read as the choices
                raise AutocompError(f"{name} must be one list of choices for every block, got a mapping "
                                    f"{dict(getattr(self, name))!r}: give some blocks choices of their own under "
                                    f"blocks:, e.g. blocks: {{0: {{{name}: [...]}}}} (some of the space's {name})")
        for name in ("heads_keep", "mlp_keep", "rank", "tokens_keep"):
            values = getattr(self, name)
            if not values or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1
                                 for f in values):
                raise AutocompError(f"{name} must list fractions in (0, 1], got {list(values)}")
        allowed = (FLOAT_BITS, *WEIGHT_BITS)
        if not self.weight_bits or any(b not in allowed for b in self.weight_bits):
            raise AutocompError(f"weight_bits must list values from {list(allowed)}, got {list(self.weight_bits)}")
        if not self.quantize_layers:
            raise AutocompError("quantize_layers must list at least one choice, e.g. [all, 'qkv,fc1']")
        for choice in self.quantize_layers:
            Quantize(layers=_layers(choice))  # the operator's own check of the names, with its message
        if (not isinstance(self.act_bits, (list, tuple)) or not self.act_bits or len(set(self.act_bits)) < len(
                self.act_bits) or any(isinstance(b, bool) or b not in ACT_BITS for b in self.act_bits)):
            raise AutocompError(f"act_bits must list null (dynamic: the int8 kernel quantizes each batch) and/or 8 "
                                f"(static: calibrated), each once, e.g. [null, 8], got {self.act_bits!r}")
        if STATIC_BITS in self.act_bits and STATIC_BITS not in self.weight_bits:
            raise AutocompError(f"act_bits offers {STATIC_BITS} (static activations), which only blocks with "
                                f"{STATIC_BITS}-bit weights use, but weight_bits {list(self.weight_bits)} has no "
                                f"{STATIC_BITS}; add {STATIC_BITS} to weight_bits or leave act_bits out")
        # the operators' own configs validate the method names and the smoothing strength, with their messages,
        # said with the space's key (its alpha is distill_alpha)
        checks = [("smooth", lambda: Quantize(weight_bits=8, smooth=self.smooth)),
                  ("group_size", lambda: Quantize(weight_bits=4, group_size=self.group_size)),
                  ("head_importance", lambda: PruneHeads(keep=1, importance=self.head_importance)),
                  ("token_method", lambda: ReduceTokens(keep=1.0, method=self.token_method)),
                  ("lowrank_method", lambda: LowRank(rank=1.0, method=self.lowrank_method)),
                  ("lowrank_layers", lambda: LowRank(rank=1.0, layers=self.lowrank_layers))]
        checks += [("distill", lambda steps=steps, alpha=alpha: Distill(steps=steps, alpha=alpha,
                                                                        temperature=self.distill_temperature))
                   for steps in self.distill_steps for alpha in self.distill_alpha]
        for key, check in checks:
            try:
                check()
            except AutocompError as exc:  # "alpha must be" of distill_alpha, "method must be" of token_method
                text = str(exc)
                raise AutocompError(text if text.startswith(key + " ") else f"distill_{text}" if key == "distill"
                                    else f"lowrank_{text}" if key == "lowrank_layers" else f"{key}: {text}") from None
        object.__setattr__(self, "blocks", self._checked_blocks())
        if self.group_size % 16:  # the runtimes' low-bit kernels (MatMulNBits) take blocks of 16 and more
            raise AutocompError(f"group_size must be a multiple of 16, got {self.group_size}: the low-bit kernels of "
                                "ONNX Runtime and OpenVINO take blocks of 16, 32, 64 ..., and other groups would run "
                                "as fp32 there")

    def _checked_blocks(self) -> dict[Any, dict[str, tuple]]:
        """``blocks`` checked: keys a block index or a range, values the knobs' narrower choices (as tuples)."""
        if not isinstance(self.blocks, Mapping):
            raise AutocompError(f"blocks must map blocks to their own choices, e.g. {{0: {{weight_bits: [32]}}}}, got "
                                f"{type(self.blocks).__name__} {self.blocks!r}")
        if self.blocks and self.uniform:
            raise AutocompError("blocks gives some blocks choices of their own, but uniform: true draws one choice for "
                                "every block alike: leave one of the two out")
        checked: dict[Any, dict[str, tuple]] = {}
        for key, choices in self.blocks.items():
            _block_range(key, depth=None)  # the key's form
            if not isinstance(choices, Mapping) or not choices:
                raise AutocompError(f"blocks: {key!r} must map knobs to that block's choices, e.g. {{weight_bits: "
                                    f"[32]}}, got {choices!r}")
            own = {}
            for knob, values in choices.items():
                if knob not in BLOCK_KNOBS:
                    close = difflib.get_close_matches(str(knob), BLOCK_KNOBS, n=1, cutoff=0.75)
                    raise AutocompError(f"blocks: {key!r}: {knob!r} is not a per-block knob"
                                        + (f" (did you mean {close[0]!r}?)" if close else "")
                                        + f"; blocks narrow {', '.join(BLOCK_KNOBS)}")
                if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence) or not values:
                    raise AutocompError(f"blocks: {key!r}: {knob} must list that block's choices, e.g. "
                                        f"{list(getattr(self, knob))[:2]}, got {values!r}")
                extra = [v for v in values if v not in getattr(self, knob)]
                lightest = max(getattr(self, knob))  # fractions and bit widths: the largest compresses least
                if not extra and lightest not in values:
                    raise AutocompError(f"blocks: {key!r}: {knob} {list(values)} leaves out the space's least "
                                        f"compressing choice, {lightest:g}: a block's own choices hold a block back "
                                        f"from compression, they do not force it (add {lightest:g})")
                if extra:
                    raise AutocompError(f"blocks: {key!r}: {knob} {list(values)} offers {extra[0]!r}, which the "
                                        f"space's own {knob} {list(getattr(self, knob))} does not: a block's choices "
                                        f"are some of the space's (add {extra[0]!r} to the space's {knob} to offer it)")
                own[knob] = tuple(v for v in getattr(self, knob) if v in values)  # in the space's order
            checked[key] = own
        return checked

    def for_depth(self, depth: int, *, where: str) -> SearchSpace:
        """This space with ``blocks`` resolved for a model of ``depth`` blocks: each block index (0 .. depth - 1)
        mapped to its own choices.

        Raises:
            AutocompError: a block the model does not have, or a knob given two lists for one block.
        """
        resolved: dict[int, dict[str, tuple]] = {}
        given: dict[tuple[int, str], Any] = {}
        for key, choices in self.blocks.items():
            for index in _block_range(key, depth=depth, where=where):
                for knob, values in choices.items():
                    if (index, knob) in given:
                        raise AutocompError(f"{where}: blocks: {given[index, knob]!r} and {key!r} both give block "
                                            f"{index}'s {knob} (a {depth}-block model): give each block's knob once")
                    given[index, knob] = key
                    resolved.setdefault(index, {})[knob] = values
        return dataclasses.replace(self, blocks=dict(sorted(resolved.items())))

    def own(self, block: int, knob: str) -> tuple | None:
        """``block``'s own choices of ``knob`` (``blocks``, resolved by :meth:`for_depth`), or None."""
        return self.blocks.get(block, {}).get(knob)

    def check_ranks(self, base: nn.Module, *, where: str) -> None:
        """Refuse a ``rank`` the operator refuses in every block of ``base`` (``rank: [0.3, 0.6]``: 0.6 keeps more
        of the square ``proj``'s ranks than its two factors can hold; ``lowrank_layers`` without ``proj`` would take
        it). The passes before the search would offer it in no block, or, where it is the knob's least compressing
        choice, stop the search."""
        blocks = vit_blocks(base)
        for value in (v for v in self.rank if v < 1):
            reasons = [refusal(LowRank(rank=value, layers=self.lowrank_layers), block, index)
                       for index, block in enumerate(blocks)]
            if all(reasons):
                raise AutocompError(f"{where}: the operator refuses rank {value:g} in every block of the model, as one "
                                    f"of lowrank_layers cannot take it: {reasons[0]}")

    def check_tokens(self, base: nn.Module, *, where: str) -> None:
        """Refuse ``token_method: prune`` with a token reduction offered on a model without a class token: pruning
        ranks tokens by the class token's attention, so the operator refuses it in every block (the passes before
        the search left it out of every block, and the search ran without token reduction)."""
        if (self.token_method == "prune" and any(keep < 1 for keep in self.tokens_keep)
                and getattr(base, "cls_token", None) is None):
            raise AutocompError(f"{where}: token_method prune ranks tokens by the class token's attention, and this "
                                "model has no class token: use token_method merge, or leave tokens_keep out")

    def check_layers(self, base: nn.Module, *, where: str) -> None:
        """Refuse a ``quantize_layers`` choice that names no Linear of ``base``'s first block (the names are checked
        alone when the space is read; here against the model): the operators would refuse every such candidate,
        and the passes before the search would leave 8-bit weights out of every block unsaid."""
        if not any(bits != FLOAT_BITS for bits in self.weight_bits):
            return
        block = vit_blocks(base)[0]
        for choice in self.quantize_layers:
            try:
                check_layers(block, Quantize(layers=_layers(choice)))
            except AutocompError as exc:
                raise AutocompError(f"{where}: quantize_layers choice {choice!r}: {exc} (checked on the uncompressed "
                                    "model's first block)") from None

    @property
    def chooses_activations(self) -> bool:
        """Whether a block with 8-bit weights chooses between dynamic and static activations."""
        return len(set(self.act_bits)) > 1

    def first_act(self, block: int, allowed: Mapping[str, Sequence[Any]] | None = None) -> int | None:
        """The activations of ``block``, at 8 bits, where nothing chooses them (a recipe of the passes before the
        search, a starting point, a local move that makes the block 8-bit): dynamic where offered (``allowed``, as
        for :meth:`sample`), else static."""
        return None if None in self.offered(block, "act_bits", allowed) else STATIC_BITS

    def completed(self, params: Mapping[str, Any], blocks: int, *,
                  allowed: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
        """``params`` (Optuna's, as :meth:`params` gives them) with what a quantized block asks and ``params`` lacks
        (a move that quantizes a block its base left in float, or makes it 8-bit): ``quantize_layers`` at the first
        choice offered, an 8-bit block's ``act_bits`` at :meth:`first_act`."""
        done = dict(params)
        for index in range(1 if self.uniform else blocks):
            options = self.offered(index, "weight_bits", allowed)
            name = self.name(index, "weight_bits")
            if len(options) == 1:
                bits = options[0]
            elif name + RANK in done:
                bits = sorted(options)[done[name + RANK]]
            else:  # not a parameter set: sample says what is missing
                continue
            if bits == FLOAT_BITS:
                continue
            if len(layers := self.offered(index, "quantize_layers", allowed)) > 1:
                done.setdefault(self.name(index, "quantize_layers"), layers[0])
            if bits == STATIC_BITS and len(self.offered(index, "act_bits", allowed)) > 1:
                done.setdefault(self.name(index, "act_bits"), self.first_act(index, allowed))
        return done

    def sample(self, trial: Any, heads_per_block: Sequence[int], *,
               allowed: Mapping[str, Sequence[Any]] | None = None) -> Recipe:
        """Ask an Optuna trial for one choice per block and knob; returns the recipe.

        ``allowed``: narrower choices for some parameters (``b3.heads_keep``: what the sensitivity pass left).
        """
        blocks = []
        for index, heads in enumerate(heads_per_block):
            def choose(knob: str) -> Any:
                return _choose(trial, self.name(index, knob), self.offered(index, knob, allowed))  # noqa: B023

            block: dict[str, Any] = {}
            keep = heads_kept(choose("heads_keep"), heads)
            if keep < heads:
                block["prune_heads"] = PruneHeads(keep=keep, importance=self.head_importance)
            if (mlp := choose("mlp_keep")) < 1:
                block["prune_mlp"] = PruneMlp(keep=mlp)
            if (rank := choose("rank")) < 1:
                block["low_rank"] = LowRank(rank=rank, method=self.lowrank_method, layers=self.lowrank_layers)
            # after the last block, fewer tokens reach only the head's pooling: no block runs on fewer, nothing is
            # saved (and the recipe says what was done)
            if (tokens := choose("tokens_keep")) < 1 and index < len(heads_per_block) - 1:
                block["reduce_tokens"] = ReduceTokens(keep=tokens, method=self.token_method)
            if (bits := choose("weight_bits")) != FLOAT_BITS:
                act = choose("act_bits") if bits == STATIC_BITS else None
                config = Quantize(weight_bits=bits, act_bits=act, layers=_layers(choose("quantize_layers")),
                                  **({"group_size": self.group_size} if bits < 8 else {}))  # 8+: per channel
                smoothed = bits == 8 and config.reads_norm_outputs  # smoothing changes nothing else
                block["quantize"] = dataclasses.replace(config, smooth=self.smooth) if smoothed else config
            blocks.append(block)
        steps = _choose(trial, "distill_steps", self.distill_steps)
        alpha = _choose(trial, "distill_alpha", self.distill_alpha) if steps > 0 else None
        # the uncompressed model has nothing to recover: one recipe, whatever the draw's distillation (it would be
        # the same model run again under another name)
        distill = Distill(steps=steps, alpha=alpha, temperature=self.distill_temperature) \
            if steps > 0 and any(blocks) else None
        return Recipe(blocks=tuple(blocks), distill=distill)

    def distinct(self, heads_per_block: Sequence[int]) -> dict[str, tuple]:
        """Per parameter, the choices offered before the passes narrow them, as ``allowed`` for :meth:`sample`: a
        block's own (``blocks``), of ``heads_keep`` one per head count (:meth:`distinct_heads`); only parameters
        narrower than the space's lists are listed."""
        own = {self.name(index, knob): values for index, choices in self.blocks.items()
               if isinstance(index, int) and index < len(heads_per_block) for knob, values in choices.items()}
        return {**own, **self.distinct_heads(heads_per_block)}

    def distinct_heads(self, heads_per_block: Sequence[int]) -> dict[str, tuple]:
        """Per ``heads_keep`` parameter, the choices (the block's own, else the space's) that keep different numbers
        of heads (of each group, the largest fraction); only parameters that lose a choice are listed. With 4 heads,
        0.67 and 0.83 both keep 3: offered both, a sampler draws 3 heads twice as often as any other count, and a
        search spends its trials on one recipe under two names."""
        kept: dict[str, set] = {}
        choices: dict[str, tuple] = {}
        for index, heads in enumerate(heads_per_block):
            name = self.name(index, "heads_keep")
            choices[name] = self.own(index, "heads_keep") or self.heads_keep  # a uniform space has no blocks' own
            counts: dict[int, float] = {}
            for fraction in sorted(choices[name], reverse=True):
                counts.setdefault(heads_kept(fraction, heads), fraction)
            kept.setdefault(name, set()).update(counts.values())  # uniform: any block's
        return {name: tuple(v for v in choices[name] if v in values) for name, values in kept.items()
                if len(values) < len(choices[name])}

    def size(self, blocks: int, *, allowed: Mapping[str, Sequence[Any]] | None = None) -> int:
        """How many different recipes :meth:`sample` can make for ``blocks`` blocks, given ``allowed`` (heads
        fractions that keep the same count are told apart only by ``allowed``, as :meth:`distinct` gives it)."""
        total = uncompressed = 1  # the block choices, and those of them that compress nothing
        for index in range(1 if self.uniform else blocks):
            last = index == blocks - 1  # where tokens are never reduced (sample), every choice is the same

            def count(knob: str) -> int:
                return 1 if knob == "tokens_keep" and last else len(self.offered(index, knob, allowed))  # noqa: B023

            def none(knob: str) -> int:
                if knob == "tokens_keep" and last:  # noqa: B023
                    return 1
                return sum(value == 1 for value in self.offered(index, knob, allowed))  # noqa: B023

            bits = self.offered(index, "weight_bits", allowed)
            floats = sum(b == FLOAT_BITS for b in bits)
            # a quantized width comes with each choice of layers, an 8-bit one with each of activations too
            quantized = sum(count("act_bits") if b == STATIC_BITS else 1 for b in bits if b != FLOAT_BITS)
            total *= (count("heads_keep") * count("mlp_keep") * count("rank") * count("tokens_keep")
                      * (floats + quantized * count("quantize_layers")))
            uncompressed *= none("heads_keep") * none("mlp_keep") * none("rank") * none("tokens_keep") * floats
        distillations = sum(len(self.distill_alpha) if steps > 0 else 1 for steps in self.distill_steps)
        return total * distillations - uncompressed * (distillations - 1)  # the uncompressed model is never distilled

    def offered(self, block: int, knob: str, allowed: Mapping[str, Sequence[Any]] | None = None) -> tuple:
        """The choices of the per-block ``knob`` offered in ``block``: those ``allowed`` (as for :meth:`sample`)
        leaves it, else all of the space's. The blocks' own choices (``blocks``) are in ``allowed`` from
        :meth:`distinct` on: without it, a recipe of any of the space's choices is built as asked (the passes
        before the search score each setting in every block)."""
        return tuple((allowed or {}).get(self.name(block, knob), getattr(self, knob)))

    def fitted(self, block: int, knob: str, value: Any) -> Any:
        """``value`` where ``block``'s own choices (``blocks``) offer it, else the least compressing of those: a
        setting of every block alike (a starting point), in a block that keeps choices of its own."""
        own = self.own(block, knob)
        return value if own is None or value in own else max(own)  # fractions and bit widths: larger is lighter

    def name(self, block: int, knob: str) -> str:
        """The Optuna parameter (before the rank suffix) of a per-block knob: ``b3.heads_keep``, or
        ``all.heads_keep`` in a uniform space."""
        return f"all.{knob}" if self.uniform else f"b{block}.{knob}"

    def params(self, values: Mapping[str, Any], *,
               allowed: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
        """The Optuna parameters that make :meth:`sample` (given the same ``allowed``) choose ``values``
        (``b0.heads_keep``: 0.5, ...; knobs with one choice are left out), e.g. to queue a recipe with
        ``study.enqueue_trial``."""
        params = {}
        for name, value in values.items():
            options = (allowed or {}).get(name, getattr(self, name.split(".")[-1]))
            if value not in options:
                raise AutocompError(f"{name} = {value!r} is not among the space's choices {list(options)}")
            if len(options) == 1:
                continue
            params.update({name + RANK: sorted(options).index(value)} if _ordered(options) else {name: value})
        return params


def _block_range(key: Any, *, depth: int | None, where: str = "") -> range:
    """The blocks a ``blocks`` key names in a model of ``depth`` blocks: ``3``, ``-1`` (the last), ``"0..3"``
    (inclusive), ``"-3..-1"``; with ``depth`` None only the key's form is checked."""
    if isinstance(key, int) and not isinstance(key, bool):
        ends = (key, key)
    elif isinstance(key, str) and re.fullmatch(r"\s*-?\d+\s*", key):  # a quoted index ("0": JSON's keys)
        ends = (int(key), int(key))
    elif isinstance(key, str) and (match := re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", key)):
        ends = (int(match[1]), int(match[2]))
    else:
        raise AutocompError(f"blocks: {key!r} is not a block: give a block index (0 the first, -1 the last) or an "
                            "inclusive range as \"2..5\" or \"-3..-1\"")
    if depth is None:
        return range(0)
    first, last = (end + depth if end < 0 else end for end in ends)
    if not (0 <= first < depth and 0 <= last < depth):
        raise AutocompError(f"{where}: blocks: {key!r} names blocks the model does not have: it has {depth} (0 to "
                            f"{depth - 1}, or -{depth} to -1)")
    if first > last:
        raise AutocompError(f"{where}: blocks: {key!r} is a range written backwards (blocks {first} to {last} of "
                            f"{depth}): write \"{last}..{first}\", first block to last")
    return range(first, last + 1)


def heads_kept(fraction: float, heads: int) -> int:
    """How many of a block's ``heads`` a ``heads_keep`` fraction keeps (at least one)."""
    return max(1, round(fraction * heads))


def setting_label(knob: str, value: Any, heads: Sequence[int] = (), *, dynamic: bool = False) -> str:
    """A knob's setting as messages name it: ``mlp_keep 0.5``; a head fraction with the heads it keeps where the
    blocks it is in (``heads``: their head counts) have as many (``heads_keep 0.83 (2 of 3 heads)``): fractions
    that keep as many heads are one setting; ``STATIC`` as ``weight_bits 8 with static activations``, and with
    ``dynamic`` (a space that chooses activations) ``weight_bits 8`` as ``... with dynamic activations``."""
    if (knob, value) == STATIC:
        return f"weight_bits {STATIC_BITS:g} with static activations"
    label = f"{knob} {value:g}"
    if dynamic and (knob, value) == ("weight_bits", STATIC_BITS):
        label += " with dynamic activations"
    if knob == "heads_keep" and len(set(heads)) == 1:
        label += f" ({heads_kept(value, heads[0])} of {heads[0]} heads)"
    return label


def _layers(choice: str) -> tuple[str, ...] | None:
    """``all`` -> None (every Linear); ``qkv,fc1`` -> ("qkv", "fc1")."""
    if not isinstance(choice, str) or not choice.strip():
        raise AutocompError(f"quantize_layers choices are 'all' or layer names joined by commas, got {choice!r}")
    return None if choice.strip() == "all" else tuple(name.strip() for name in choice.split(","))


def _choose(trial: Any, name: str, options: Sequence[Any]) -> Any:
    """One of ``options``: numbers are ordered (the sampler sees their rank, an integer, so it learns that 0.67
    lies between 0.5 and 0.83), names are categories."""
    if not options:
        raise AutocompError(f"{name}: no choice is left to offer (the passes before the search removed every one); "
                            "this is a bug in autocomp, please report it with the run folder's sensitivity.csv")
    if len(options) == 1:
        return options[0]
    if _ordered(options):
        ranked = sorted(options)
        return ranked[trial.suggest_int(name + RANK, 0, len(ranked) - 1)]
    return trial.suggest_categorical(name, list(options))


def _ordered(options: Sequence[Any]) -> bool:
    return all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options)


def load_space(path: str | Path) -> SearchSpace:
    """Read a search-space YAML; unknown keys and bad values are named with the file."""
    return build(SearchSpace, read_yaml(path, what="search space"), where=f"search space {path}")
