"""The training runs' configs, torch-free so that `zeroverse train-lrm` builds its flags from
them (defaults and help texts defined once, here) without importing torch.

    RunConfig        the fields every trainer has (run folder, data, logging, losses, limits)
    TrainConfig      GS-LRM (train.py)
    G3RTrainConfig   the G3R learned optimizer (g3r_train.py)

A field's help text (`setting(default, help)`) is the CLI's; "{default}" is filled in. Flags
whose help starts with "gs-lrm: " or "g3r: " apply to that model only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .g3r import G3RConfig


def setting(default: Any = None, help: str | None = None, **kwargs) -> Any:  # noqa: A002
    """A config field whose `help` (the CLI's help text, `{default}` filled in) lives beside
    its default, so `zeroverse train-lrm` defines neither a second time."""
    if "default_factory" in kwargs:
        return field(metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class RunConfig:
    """Fields every trainer shares, with one default each; the model's config class adds its
    own (and those whose default differs: steps, batch_size, lr, ...)."""

    root: str = field(metadata={"help": "Root with rendered views."})  # unused with an injected dataset
    out: str = field(metadata={"help": "Run folder."})
    preset: str = "small"  # model size (each model's PRESETS)
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    num_target_views: int = setting(4, "Default: {default} novel views.")
    perceptual_weights: str | None = setting(
        None, "VGG16 state dict for the perceptual loss (without it: MSE + SSIM).")  # losses.PerceptualLoss
    lpips_weight: float = 0.5
    ssim_weight: float = 0.2  # used only when there are no perceptual weights
    log_every: int = 10
    image_every: int = 1_000
    seed: int = 0
    resume: bool = setting(False, "Continue the run in --out from its latest checkpoint.")
    num_workers: int = 4
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")  # torchrun: the local rank's GPU
    # Stop (with a checkpoint) after this many minutes even if `steps` is not reached: for runs
    # that must fit a fixed machine lease. Keep `steps` near what fits so the cosine decays.
    max_minutes: float | None = setting(None, "Stop with a checkpoint after this long.")

    def check_common(self, positive: tuple[str, ...] = ()) -> None:
        """The checks every trainer makes; `positive` names more fields that must be > 0."""
        for name in ("steps", "batch_size", "num_input_views", "num_target_views",
                     "log_every", "image_every", "ckpt_every") + positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two floats, got {self.betas}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


MODELS = ("gs-lrm",)
MODEL_KIND = "g3r"  # G3R checkpoints' model_kind
# Help texts of the flags that apply to one model only start so (train-lrm refuses the others).
GS_ONLY = "gs-lrm: "
G3R_ONLY = "g3r: "


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    model: str = setting("gs-lrm", "g3r: the learned iterative optimizer (single process).")
    # GSLRMConfig fields over the preset's, e.g. {"distance": "camera", "qk_norm": False}
    # (ablations of the parameterisation; train-lrm --model-option KEY=VALUE).
    model_options: dict = setting(
        help=GS_ONLY + "a GSLRMConfig field over the preset's, e.g. distance=camera, qk_norm=false (repeatable).",
        default_factory=dict)
    steps: int = 100_000
    batch_size: int = setting(8, "Per GPU/process.")  # per process
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 2_000
    bf16: bool = setting(True, "bf16 autocast (CUDA only).")  # the transformer; rendering stays fp32
    grad_checkpointing: bool = False
    attention: str = "auto"  # SDPA kernel preference (gslrm.ATTENTION_BACKENDS), speed only
    num_input_views: int = 4
    image_size: int | None = setting(
        None, "Default: the views' stored resolution (other sizes are resized on the fly).")  # resolve_image_size
    # Resolution curriculum (GS-LRM trains low resolution first): until `low_res_until` of the
    # run (by progress, see `schedule`) batches are downsampled on the fly to `low_res`, about
    # 4x cheaper per step at 128² vs 256². None or >= image_size: full resolution throughout.
    low_res: int | None = setting(128, GS_ONLY + "resolution of the curriculum's first part (default {default}; 0: off).")
    low_res_until: float = setting(0.7, GS_ONLY + "share of the run at --low-res (default {default}).")
    # Render and supervise the input views as well as the novel ones (GS-LRM-style).
    supervise_inputs: bool = setting(True, GS_ONLY + "also render and supervise the input views (default {default}).")
    # Input cameras: "random" views, or "mixed": a `layout_share` of the samples take the views
    # a random rig rendered in the evaluation layout (RigConfig.layout_views) as inputs; shapes
    # without such views stay random. Held-out evaluation stays on its own rigs.
    view_sampling: str = setting(
        "mixed", GS_ONLY + "{default} (default) gives --layout-share of the samples the layout views as inputs.")
    layout_share: float = setting(
        0.25, GS_ONLY + "share of samples with evaluation-layout inputs (default {default}; needs views rendered with "
        "--layout-views).")
    # "steps": progress (LR cosine, curriculum, depth schedule) = step / steps. "time": with
    # max_minutes, progress = max(step / steps, elapsed / max_minutes), so a run bounded by a
    # machine lease still decays its LR and reaches full resolution (not bit-reproducible; a
    # resumed run's clock starts again at its own start: use "steps" for runs that resume).
    schedule: str = setting(
        "steps", GS_ONLY + "time: LR, curriculum and depth schedules follow --max-minutes' clock (default {default}).")
    compile: bool = setting(True, GS_ONLY + "torch.compile the transformer blocks on CUDA (default {default}).")
    # Decode the whole set once into GPU memory and gather batches there (zeroverse.data.
    # resident): "auto" when it fits in half the free GPU memory, "on", "off" (DataLoader).
    data_on_gpu: str = setting(
        "auto", GS_ONLY + "decode the views once into GPU memory (default {default}: when they fit).")
    ckpt_every: int = 5_000
    # Geometry supervision from the renders' own depth and alpha (synthetic data carries both;
    # evaluation never uses them). depth: L1 between each input pixel's predicted distance along
    # its ray and the true one, on covered pixels; alpha: MSE between the rendered and the true
    # coverage of the rendered views. They teach where surfaces are far sooner than colour alone
    # (a batch without depths/alphas skips the term). 0 disables. The depth weight is strong
    # early and decays (cosine) to depth_weight_end over the first depth_decay of the run.
    depth_weight: float = setting(
        1.0, GS_ONLY + "L1 on each input pixel's distance along its ray, from the renders' depth, at the start "
        "(default {default}; 0: off).")
    depth_weight_end: float = setting(0.1, GS_ONLY + "the depth weight after its cosine decay (default {default}).")
    depth_decay: float = setting(0.5, GS_ONLY + "share of the run over which the depth weight decays (default {default}).")
    alpha_weight: float = setting(0.1, GS_ONLY + "MSE between rendered and true coverage (default {default}; 0: off).")

    def __post_init__(self):
        from .gslrm import PRESETS, GSLRMConfig  # here: the CLI builds its flags without torch

        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} is not trained here; choose one of {MODELS}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} unknown; choose one of {sorted(PRESETS)}")
        self.check_common()
        for name in ("image_size", "low_res"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive or None, got {getattr(self, name)}")
        for name in ("low_res_until", "layout_share", "depth_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.view_sampling not in ("random", "mixed"):
            raise ValueError(f"view_sampling must be 'random' or 'mixed', got {self.view_sampling!r}")
        if self.schedule not in ("steps", "time"):
            raise ValueError(f"schedule must be 'steps' or 'time', got {self.schedule!r}")
        if self.schedule == "time" and self.max_minutes is None:
            raise ValueError("schedule='time' follows the clock of max_minutes: set max_minutes too")
        if self.data_on_gpu not in ("auto", "on", "off"):
            raise ValueError(f"data_on_gpu must be 'auto', 'on' or 'off', got {self.data_on_gpu!r}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("warmup_steps and num_workers must be >= 0")
        for name in ("lpips_weight", "ssim_weight", "depth_weight", "depth_weight_end", "alpha_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        known = {f.name for f in fields(GSLRMConfig)} - {"image_size", "num_input_views", "param_version"}
        unknown = set(self.model_options) - known
        if unknown:
            raise ValueError(f"model_options {sorted(unknown)} are not GS-LRM settings; choose from {sorted(known)}")


@dataclass(frozen=True)
class G3RTrainConfig(RunConfig):
    model: str = "g3r"
    steps: int = 20_000  # optimizer iterations (each unrolls up to T refinement steps)
    batch_size: int = 2  # shapes per iteration
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 500
    num_input_views: int = 32  # source views per shape (depth init + gradients)
    image_size: int = 256
    unroll_steps: int | None = setting(None, G3R_ONLY + "refinement steps T (default 24).")  # None = the preset's
    turbo_steps: int | None = setting(None, G3R_ONLY + "steps of the turbo schedule (default 6).")  # None = the preset's
    turbo_fraction: float = 0.25  # share of iterations that unroll the turbo schedule
    unroll_warmup: int = setting(
        2_000, G3R_ONLY + "iterations over which the unroll length grows from 1 to T (default {default}).")
    truncate_every: int = 6  # backward and detach the state every k steps; <= 0: never
    num_points: int | None = setting(None, G3R_ONLY + "Gaussians per shape.")  # None = the preset's
    novel_weight: float = 1.0  # weight of the novel-view loss next to the source-view one
    flat_weight: float = 0.1
    backend: str = "auto"  # rasterizer: auto | gsplat | torch
    ckpt_every: int = 1_000

    def __post_init__(self):
        from .g3r import PRESETS  # here: the CLI builds its flags without torch

        if self.model != MODEL_KIND:
            raise ValueError(f"model {self.model!r}: G3RTrainConfig trains only 'g3r' "
                             "(gs-lrm: train.TrainConfig)")
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} unknown; choose one of {sorted(PRESETS)}")
        self.check_common(positive=("image_size",))
        for name in ("unroll_steps", "turbo_steps", "num_points"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive or None, got {v}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive or None, got {self.max_minutes}")
        if self.warmup_steps < 0 or self.num_workers < 0 or self.unroll_warmup < 0:
            raise ValueError("warmup_steps, unroll_warmup and num_workers must be >= 0")
        if not 0 <= self.turbo_fraction <= 1:
            raise ValueError(f"turbo_fraction must be in [0, 1], got {self.turbo_fraction}")
        if self.backend not in ("auto", "gsplat", "torch"):
            raise ValueError(f"backend must be auto, gsplat or torch, got {self.backend!r}")

    def model_config(self) -> "G3RConfig":
        from .g3r import G3RConfig

        overrides = {k: v for k, v in (("steps", self.unroll_steps), ("turbo_steps", self.turbo_steps),
                                       ("num_points", self.num_points)) if v is not None}
        return G3RConfig.preset(self.preset, **overrides)
