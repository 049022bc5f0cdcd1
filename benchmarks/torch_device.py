"""Where a PyTorch reference runs: `--torch-device auto|cpu|cuda`, and timing that waits for it.

auto is cuda when torch sees a CUDA device, else cpu. On cuda the references keep their
data on the host, as the course's code does, and move each batch to the device; nn.LSTM
runs through cuDNN there, and `cudnn.benchmark` picks the fastest convolution algorithms
for the fixed shapes of the U-Net and the CNN. Every epoch time is taken after
`synchronize`, so queued GPU work is counted where it was issued.
"""

from __future__ import annotations

CHOICES = ("auto", "cpu", "cuda")


def torch_unavailable_reason() -> str | None:
    """None when torch imports, else why not (one line, for a report's PyTorch column)."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        return f"torch is not installed ({err.msg}); pip install 'molml-jax[torch]'"
    return None


def resolve_torch_device(name: str = "auto", *, convolutions: bool = False):
    """The torch.device for `name` ('auto', 'cpu' or 'cuda'); InputError if it can't be had.

    convolutions: turn on cudnn.benchmark (worth it for fixed-shape conv nets, not the LSTM).
    """
    import torch

    from molml_jax.errors import InputError

    if name not in CHOICES:
        raise InputError(f"--torch-device must be one of {', '.join(CHOICES)}, not {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"--torch-device cuda: torch {torch.__version__} ({build}) sees no CUDA device")
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = convolutions
    return torch.device(name)


def check_torch_device(name: str = "auto") -> None:
    """For a command that needs PyTorch: InputError (one line) when torch is missing or the
    device can't be had, before anything runs."""
    from molml_jax.errors import InputError

    reason = torch_unavailable_reason()
    if reason is not None:
        raise InputError(reason)
    resolve_torch_device(name)


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), before reading a clock."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device) -> str:
    """'cpu' or 'cuda (NVIDIA H200)': what a report shows for the PyTorch side."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
