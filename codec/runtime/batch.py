"""Input checks and padded batches shared by the offline coders (``Codec`` and a streamer's
snapshot): audio [B, 1, T] padded to whole frames, and several signals encoded in one padded
batch, each cut back to its own frames."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


def check_tensor(x: object, name: str, what: str) -> None:
    """TypeError naming the expected input unless ``x`` is a torch.Tensor (a NumPy array
    included: convert it with torch.from_numpy)."""
    if not isinstance(x, Tensor):
        hint = "; convert it with torch.from_numpy(...)" if type(x).__module__.startswith("numpy") else ""
        raise TypeError(f"{name} must be a torch.Tensor of {what}, got {type(x).__name__}{hint}")


def pad_to_hop(wav: Tensor, hop: int) -> Tensor:
    """Audio float [B, 1, T] zero-padded at the end to a whole number of ``hop``-sample frames,
    [B, 1, ceil(T / hop) hop]; ValueError for another shape."""
    if wav.dim() != 3 or wav.shape[1] != 1:
        raise ValueError(f"expected audio of shape [B, 1, T], got {tuple(wav.shape)}")
    extra = (-wav.shape[-1]) % hop
    return nn.functional.pad(wav, (0, extra)) if extra else wav


def check_items(items: Sequence[Tensor], name: str, what: str, dim: int) -> None:
    """Refuse the items of a batch call: not a Tensor (TypeError), not of ``dim`` dimensions
    with the last at least 1 (ValueError). ``name`` and ``what`` (e.g. "float audio [T]") name
    the items in the messages."""
    for x in items:
        check_tensor(x, name, what)
        if x.dim() != dim or x.shape[-1] == 0:
            raise ValueError(f"expected {name} to be {what}, its last dimension at least 1; got shape"
                             f" {tuple(x.shape)}")


def pad_end(items: Sequence[Tensor]) -> Tensor:
    """Tensors [..., L_i] (one shape but the last dimension) zero-padded at the end into one
    [B, ..., max L_i]."""
    padded = nn.utils.rnn.pad_sequence([x.movedim(-1, 0) for x in items], batch_first=True)  # [B, L, ...]
    return padded.movedim(1, -1).contiguous()


def encode_batch(encode: Callable[[Tensor, int | None], Tensor], hop: int, wavs: Sequence[Tensor],
                 n_q: int | None) -> list[Tensor]:
    """Float audio tensors [T_i] -> codes int64 [n_q, ceil(T_i / hop)] each, in order, through
    one call of ``encode`` (audio [B, 1, T] -> codes [B, n_q, ceil(T / hop)]) on the signals
    zero-padded at the end to the longest; the padded frames are cut off."""
    check_items(wavs, "each wav", "float audio [T]", 1)
    if not wavs:
        return []
    codes = encode(pad_end(wavs)[:, None], n_q)  # audio [B, 1, max T] in
    return [codes[i, :, : -(-wav.shape[0] // hop)] for i, wav in enumerate(wavs)]
