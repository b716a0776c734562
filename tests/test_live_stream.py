"""Live streams: the packet format on synthetic codes (no model), then ``codec stream-encode |
codec stream-decode`` as real processes joined by pipes, with the shipped default model on real
speech: equal to the offline decode, output while input still comes (within the latency), quiet
ends on closed pipes and cut-off writers, one error line for damage, joining mid-stream."""

from __future__ import annotations

import io
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, one_error_line, speech, tiny_model

from codec import Codec
from codec.bitstream import BitstreamError
from codec.bitstream.live import LiveHeader, LiveWriter, header_size
from codec.bitstream.live_reader import End, Frames, LiveReader
from codec.cli import main
from codec.cli.live_io import READ_SIZE
from codec.cli.signals import StopBetweenChunks

pytestmark = pytest.mark.usefixtures("one_thread")

EXE = [shutil.which("codec")] if shutil.which("codec") else [sys.executable, "-m", "codec"]
# One thread, as the in-process references run (the commands use one thread for their own reasons).
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
HOP = 320
#: The shipped streaming tolerance (tests/test_frame_engine.py): a stream's audio vs the
#: offline decode of the same codes.
AUDIO_TOL = 1e-4


# ----- the format, no model -----------------------------------------------------------------------
SIZES = (1024, 1024, 1024, 300)  # a stage of 300 codes: widths that allow out-of-range values


def header(packet_frames: int = 1) -> LiveHeader:
    return LiveHeader(16000, HOP, SIZES, bytes(range(16)), packet_frames)


def random_codes(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, frames) for k in SIZES])


def make_stream(frames: int, packet_frames: int = 1, header_every: int = 4, seed: int = 0,
                partial: int = 123) -> tuple[bytes, np.ndarray, int]:
    """(stream bytes, codes [N, frames], samples): codes written in uneven groups; the last frame
    ``partial`` samples short of whole."""
    codes = random_codes(frames, seed)
    w = LiveWriter(header(packet_frames), header_every)
    out, t, k = [w.start()], 0, 0
    while t < frames - 1:
        n = min([1, 3, 0, 2][k % 4], frames - 1 - t)
        out.append(w.write(codes[:, t : t + n]))
        t, k = t + n, k + 1
    samples = frames * HOP - partial
    out.append(w.end(codes[:, t:], samples))
    return b"".join(out), codes, samples


def feed_all(data: bytes, pieces: list[int] | None = None, join: bool = False) -> tuple[LiveReader, list,
                                                                                       BitstreamError | None]:
    """Feed ``data`` in pieces of the given sizes (cycled; None: at once), then close ->
    (reader, the events read, the BitstreamError that stopped it or None)."""
    r, events, pos, k = LiveReader(join=join), [], 0, 0
    sizes = pieces or [len(data) or 1]
    try:
        while pos < len(data):
            events += r.feed(data[pos : pos + sizes[k % len(sizes)]])
            pos, k = pos + sizes[k % len(sizes)], k + 1
        r.close()
    except BitstreamError as e:
        return r, events, e
    return r, events, None


def read_all(data: bytes, pieces: list[int] | None = None, join: bool = False) -> tuple[LiveReader, list]:
    """``feed_all`` that raises the error."""
    r, events, error = feed_all(data, pieces, join)
    if error is not None:
        raise error
    return r, events


def codes_of(events: list) -> np.ndarray:
    return np.concatenate([e.codes for e in events if isinstance(e, (Frames, End))], axis=1)


@pytest.mark.parametrize("packet_frames", [1, 3])
def test_packets_round_trip_in_any_pieces(packet_frames: int) -> None:
    data, codes, samples = make_stream(23, packet_frames)
    h = header(packet_frames)
    packets = 23 // packet_frames  # the end packet holds the rest
    repeats = (packets - 1) // 4
    end = 12 + -(-(23 - packets * packet_frames) * sum(h.bit_widths) // 8) + 2
    assert len(data) == h.size * (1 + repeats) + packets * h.frames_packet_size + end
    assert h.size == header_size(4) == 48 and h.frames_packet_size == 3 + -(-packet_frames * 39 // 8) + 2
    for pieces in (None, [1], [5, 1, 17, 64]):
        r, events = read_all(data, pieces)
        assert events[0] == h and isinstance(events[-1], End) and events[-1].num_samples == samples
        assert np.array_equal(codes_of(events), codes)
        assert [e.first for e in events[1:]] == list(range(0, packets * packet_frames + 1, packet_frames))
        assert r.ended and r.next_frame == 23


#: What a damaged stream is reported as: damage, a gap, or a first header that is no stream of
#: this version; never a stream cut off or left without its end packet (single-byte damage to a
#: length-giving byte is told from a cut by the CRC at end of input).
DAMAGE = "damaged|gap in the stream|wrong magic|unsupported live stream version"


@pytest.mark.parametrize("packet_frames", [1, 3])
def test_every_damage_is_detected(packet_frames: int) -> None:
    """A flipped bit anywhere (every bit of every byte), a lost packet, a cut at any byte: a
    BitstreamError that names it (from feed or close), fed at once or byte by byte, and never
    different codes: what was read before the error is the undamaged stream's beginning."""
    data, codes, samples = make_stream(11, packet_frames, header_every=3)
    h = header(packet_frames)
    for i in range(len(data)):
        for bit in range(8):
            bad = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
            for pieces in (None, [1]):
                _, events, error = feed_all(bad, pieces)
                assert error is not None and re.search(DAMAGE, str(error)), (i, bit, error)
                assert all(e == h.at_frame(e.frame) for e in events if isinstance(e, LiveHeader)), (i, bit)
                assert all(e.num_samples == samples for e in events if isinstance(e, End)), (i, bit)
                if any(isinstance(e, (Frames, End)) for e in events):
                    got = codes_of(events)
                    assert np.array_equal(got, codes[:, : got.shape[1]]), (i, bit)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError, match="truncated|cut off|without its end|empty"):
            read_all(data[:cut])
    first = h.size  # the first frames packet
    with pytest.raises(BitstreamError, match=f"gap in the stream: expected frame 0, got frame {packet_frames}:"):
        read_all(data[:first] + data[first + h.frames_packet_size :])


def test_damaged_length_byte_is_damage_not_a_cut() -> None:
    """A damaged end-packet frame count within 0..P, or kind, or the first header's stage count,
    makes the reader wait for a longer packet than was sent: at end of input that is reported as
    damage (the CRC holds with the byte set right), while the same bytes cut short are a cut."""
    data, _, _ = make_stream(10, packet_frames=4, header_every=0)  # the end packet holds 2 frames
    h = header(4)
    end = h.size + 2 * h.frames_packet_size
    assert data[end] == ord("E") and data[end + 3] == 2
    # (byte, damaged value, where the damaged packet ends)
    for at, value, stop in [(end + 3, 3, len(data)), (end + 3, 4, len(data)), (end, ord("F"), len(data)),
                            (end, ord("R"), len(data)), (5, 200, h.size), (5, 255, h.size)]:
        bad = bytearray(data)
        bad[at] = value
        with pytest.raises(BitstreamError, match="damaged"):
            read_all(bytes(bad))
        with pytest.raises(BitstreamError, match="cut off|truncated"):
            read_all(bytes(bad[: stop - 1]))  # the CRC's last byte is gone: no whole packet to check


def test_events_before_damage_come_first() -> None:
    data, codes, _ = make_stream(9, header_every=0)
    h = header()
    cut = h.size + 3 * h.frames_packet_size
    bad = data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1 :]
    r = LiveReader()
    events = r.feed(bad)
    assert np.array_equal(codes_of(events), codes[:, :3])
    with pytest.raises(BitstreamError, match="bad packet kind"):
        r.feed(b"")


def test_join_from_any_byte_offset() -> None:
    """A joining reader starts at the first header at or after where it came in (a repeated one
    says which frame follows) and reads the rest exactly; after the last header it finds none."""
    data, codes, samples = make_stream(14, header_every=4)
    h = header()
    step = 4 * h.frames_packet_size + h.size
    starts = [0] + [h.size + 4 * h.frames_packet_size + i * step for i in range(3)]  # headers before frames 0, 4, 8, 12
    for offset in range(len(data)):
        later = [s for s in starts if s >= offset]
        if not later:
            with pytest.raises(BitstreamError, match="no live stream header"):
                read_all(data[offset:], join=True)
            continue
        r, events = read_all(data[offset:], [7, 1, 30], join=True)
        frame = 4 * starts.index(later[0])
        assert r.joined_at == frame and events[0] == h.at_frame(frame)
        assert np.array_equal(codes_of(events), codes[:, frame:])
        assert events[-1].num_samples == samples


def test_strict_reader_wants_the_stream_start() -> None:
    data, _, _ = make_stream(9)
    for bad, message in [(data[5:], "wrong magic"), (b"RVQC" + bytes(60), "codec decode"),
                         (b"RIFF", "wrong magic"), (data + b"x", "after the end")]:
        with pytest.raises(BitstreamError, match=message):
            read_all(bad)
    with pytest.raises(BitstreamError, match="empty input"):
        read_all(b"")


# ----- the commands, real processes ----------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> Codec:
    return Codec.default()


def s16(wav: torch.Tensor) -> bytes:
    return np.clip(np.rint(wav[0, 0].numpy() * 32768), -32768, 32767).astype("<i2").tobytes()


def spawn(*args: str, stdin, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([*EXE, *args], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=ENV, cwd=REPO)


def read_until(fd: int, n: int, timeout: float = 120) -> bytes:
    """Read ``fd`` until ``n`` bytes have come -> them (no more); fewer when the writer closed or
    the ``timeout`` (seconds) passed first."""
    got, deadline = b"", time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        data = os.read(fd, min(1 << 16, n - len(got)))
        if not data:  # the writer closed: nothing more will come
            break
        got += data
    return got


def pipeline(enc_args: list[str], dec_args: list[str], source: Path, tee: Path) -> tuple[bytes, list, list]:
    """``stream-encode < source | tee tee | stream-decode`` -> (decoder stdout, [rc enc, rc dec],
    [stderr enc, stderr dec])."""
    with open(source, "rb") as f:
        enc = spawn("stream-encode", *enc_args, stdin=f)
    copy = subprocess.Popen(["tee", str(tee)], stdin=enc.stdout, stdout=subprocess.PIPE)
    dec = spawn("stream-decode", *dec_args, stdin=copy.stdout)
    enc.stdout.close()
    copy.stdout.close()
    out, dec_err = dec.communicate(timeout=300)
    enc_err = enc.stderr.read()
    enc.stderr.close()
    assert copy.wait(60) == 0
    return out, [enc.wait(60), dec.returncode], [enc_err.decode(), dec_err.decode()]


@pytest.fixture(scope="module")
def exact_run(model: Codec, tmp_path_factory) -> dict:
    """4 s of speech as f32le through ``stream-encode --exact | tee | stream-decode`` (headers
    every second: before frames 0, 50, 100, 150)."""
    root = tmp_path_factory.mktemp("live")
    wav = speech(4.0, index=3)
    (root / "in.f32").write_bytes(wav[0, 0].numpy().astype("<f4").tobytes())
    out, rcs, errs = pipeline(["--exact", "--pcm", "f32le"], ["--pcm", "f32le"], root / "in.f32", root / "s.live")
    assert rcs == [0, 0], errs
    return {"root": root, "wav": wav, "stream": (root / "s.live").read_bytes(), "audio": np.frombuffer(out, "<f4"),
            "stderr": errs}


def test_pipe_equals_offline_decode(model: Codec, exact_run: dict) -> None:
    """--exact: the streamed codes are the offline codes bit for bit, and the decoded stream is
    the offline decode within the streaming tolerance, cut to the input's length."""
    wav, audio = exact_run["wav"], exact_run["audio"]
    offline_codes = model.streamer("exact").encode_offline(wav)
    _, events = read_all(exact_run["stream"])
    streamed = torch.from_numpy(codes_of(events))[None]
    assert torch.equal(streamed, offline_codes)
    offline = model.decode(offline_codes)[0, 0, : wav.shape[-1]].numpy()
    assert audio.shape == offline.shape == (wav.shape[-1],)
    assert np.abs(audio - offline).max() <= AUDIO_TOL
    assert np.abs(offline).max() > 0.05  # real speech came out
    enc_err, dec_err = exact_run["stderr"]
    assert "stream-encode ready: 12 stages" in enc_err and "200 frames (4.00 s)" in enc_err
    assert "64000 samples (4.00 s)" in dec_err and "Traceback" not in enc_err + dec_err


def test_default_s16_pipe_agrees_with_offline(model: Codec, tmp_path: Path) -> None:
    """The default float32 encode on s16le: codes equal the offline codes up to near-ties (the
    agreement the shipped model's streaming tests assert), the decoded s16 the offline decode of
    those codes within the tolerance plus rounding to 16 bits."""
    wav = speech(3.0, index=1)
    (tmp_path / "in.s16").write_bytes(s16(wav))
    out, rcs, errs = pipeline([], [], tmp_path / "in.s16", tmp_path / "s.live")
    assert rcs == [0, 0], errs
    _, events = read_all((tmp_path / "s.live").read_bytes())
    streamed = torch.from_numpy(codes_of(events))[None]
    x = torch.from_numpy(np.frombuffer(s16(wav), "<i2").astype(np.float32) / 32768)[None, None]
    offline_codes = model.encode(x)
    assert streamed.shape == offline_codes.shape == (1, 12, 150)
    assert (streamed == offline_codes).float().mean().item() >= 0.99
    assert torch.equal(streamed[:, 0], offline_codes[:, 0])
    ref = model.decode(streamed)[0, 0, : wav.shape[-1]].numpy()
    got = np.frombuffer(out, "<i2").astype(np.float32) / 32768
    assert got.shape == ref.shape
    assert np.abs(got - np.clip(ref, -1, 32767 / 32768)).max() <= AUDIO_TOL + 1 / 32768


def test_join_mid_stream(model: Codec, exact_run: dict) -> None:
    """--join from an arbitrary byte inside the first second: decoding starts at the header before
    frame 50 and, once the decoder's receptive field has filled (51 frames for the default model;
    checked from 55 on), equals the full stream's decode; without --join the cut stream is refused."""
    stream, full = exact_run["stream"], exact_run["audio"]
    cut = exact_run["root"] / "cut.live"
    cut.write_bytes(stream[len(stream) // 8 + 5 :])  # a byte inside a packet of the first second
    with open(cut, "rb") as f:
        r = subprocess.run([*EXE, "stream-decode", "--join", "--pcm", "f32le"], stdin=f, capture_output=True,
                           env=ENV, cwd=REPO, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert b"joined the stream at frame 50 (1.00 s into it)" in r.stderr
    joined = np.frombuffer(r.stdout, "<f4")
    assert joined.shape == (full.shape[0] - 50 * HOP,)
    warm = 55 * HOP
    assert np.abs(joined[warm:] - full[50 * HOP + warm :]).max() <= AUDIO_TOL
    with open(cut, "rb") as f:
        r = subprocess.run([*EXE, "stream-decode", "-q"], stdin=f, capture_output=True, env=ENV, cwd=REPO, timeout=300,
                           check=False)
    assert r.returncode == 2 and "wrong magic" in one_error_line(r.stderr) and r.stdout == b""


class Lines(threading.Thread):
    """Collects a pipe's lines (stderr) and says when one containing ``word`` has come."""

    def __init__(self, pipe, word: str = "ready") -> None:
        super().__init__(daemon=True)
        self.pipe, self.word, self.lines, self.seen = pipe, word, [], threading.Event()
        self.start()

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append(line.decode())
            if self.word in self.lines[-1]:
                self.seen.set()
        self.seen.set()

    @property
    def text(self) -> str:
        self.join(60)
        return "".join(self.lines)


#: Allowance for the first decoded bytes, on top of the model's latency: they also pay for each
#: process's first pass through its loop, which a busy machine may delay by a scheduler slice or
#: a page-in; still far below what holding output back until end of input (2 s here) would give.
FIRST_MARGIN_S = 0.3
#: Allowances for the per-write lag (see the test): its median and its 90th percentile.
LAG_MEDIAN_S = 0.06
LAG_P90_S = 0.15


def test_paced_writer_gets_output_within_latency(model: Codec) -> None:
    """20 ms of s16le every 20 ms into stream-encode | stream-decode: the first decoded bytes
    come within the latency + FIRST_MARGIN_S after the write that completed the first frame, and
    the output keeps pace with the writer frame by frame (not held until end of input).

    Each write completes a frame; its lag is the time from the write until the samples it made
    final (all but the synthesis look-ahead, so the model's latency is already taken off) have
    come out of the decoder: only the processing of three processes woken in turn through two
    pipes. A decoder that holds back k frames adds k * 20 ms to every write's lag, which the
    median sees whatever a loaded machine does to single writes: its bound, 60 ms (3 frames),
    is far above what the work takes on a busy machine and is failed by a decoder lagging 5
    frames (100 ms). The 90th percentile's bound, 150 ms, lets one write in ten wait for a
    scheduler slice or a page-in, but not the output to fall behind for long stretches."""
    pcm = s16(speech(2.0, index=2))
    chunk = 2 * HOP  # bytes of 20 ms
    enc = spawn("stream-encode", stdin=subprocess.PIPE)
    dec = spawn("stream-decode", stdin=enc.stdout)
    enc.stdout.close()
    enc_err, dec_err = Lines(enc.stderr), Lines(dec.stderr)
    assert enc_err.seen.wait(120) and dec_err.seen.wait(120), enc_err.text + dec_err.text
    arrivals: list[tuple[float, int]] = []

    def read_output() -> None:
        while data := os.read(dec.stdout.fileno(), 1 << 16):
            arrivals.append((time.monotonic(), len(data)))

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    writes, t0 = [], time.monotonic()
    for i in range(0, len(pcm), chunk):
        time.sleep(max(0.0, t0 + 0.02 * (i // chunk) - time.monotonic()))  # a fixed schedule: no drift
        os.write(enc.stdin.fileno(), pcm[i : i + chunk])
        writes.append(time.monotonic())
    closed = time.monotonic()
    enc.stdin.close()
    assert enc.wait(120) == 0 and dec.wait(120) == 0, enc_err.text + dec_err.text
    reader.join(60)
    latency = model.latency / model.sample_rate
    total = np.cumsum([n for _, n in arrivals]) // 2  # samples out so far, at each arrival
    assert total[-1] == len(pcm) // 2
    first = arrivals[0][0] - writes[0]  # the first write completes frame 0: 80 samples are final then
    # when the samples each write made final (all but the synthesis look-ahead) had come out
    lookahead = model.latency - HOP
    lags = [arrivals[int(np.searchsorted(total, (i + 1) * HOP - lookahead))][0] - w for i, w in enumerate(writes)]
    n_before = int(np.searchsorted([t for t, _ in arrivals], closed))
    before_close = int(total[n_before - 1]) if n_before else 0
    assert first <= latency + FIRST_MARGIN_S
    assert np.median(lags) <= LAG_MEDIAN_S, sorted(lags)
    assert np.percentile(lags, 90) <= LAG_P90_S, sorted(lags)
    assert len(arrivals) >= 50  # frame after frame, not one block at the end
    assert before_close >= 0.9 * (len(pcm) // 2 - lookahead)


def test_reader_closing_early_ends_quietly(tmp_path: Path) -> None:
    """`| head -c 4000`, as a user types it: the decoder ends with exit 141 (as cat), the encoder
    with 141 or, when it had already written everything, 0; no traceback anywhere. The pipeline
    is bash's, so its pipes are bash's alone (no pipe end of the test process can be held open by
    another of its children), and 12 s of output (384 kB) cannot fit in a pipe's buffer."""
    (tmp_path / "in.s16").write_bytes(s16(speech(4.0, index=4)) * 3)
    exe = " ".join(shlex.quote(part) for part in EXE)
    line = (f"{exe} stream-encode -q < in.s16 | {exe} stream-decode -q | head -c 4000 > out.s16;"
            " echo ${PIPESTATUS[@]}")
    done = subprocess.run(["bash", "-c", line], capture_output=True, env=ENV, cwd=tmp_path, timeout=300)
    enc, dec, head = done.stdout.decode().split()
    assert (tmp_path / "out.s16").stat().st_size == 4000
    assert dec == "141" and enc in ("0", "141") and head == "0", done.stdout
    assert done.stderr == b"", done.stderr


def test_writer_cut_off_mid_sample_ends_cleanly(tmp_path: Path) -> None:
    """A writer that stops mid-frame and mid-sample: the encoder drops the odd byte (a warning),
    codes the partial frame and ends the stream; the decoder gives every whole sample, exit 0."""
    pcm = s16(speech(1.2345, index=5)) + b"\x01"
    enc = spawn("stream-encode", "-q", stdin=subprocess.PIPE)
    dec = spawn("stream-decode", "-q", stdin=enc.stdout)
    enc.stdout.close()
    enc.stdin.write(pcm)
    enc.stdin.close()  # the writer is gone
    out, dec_err = dec.communicate(timeout=300)
    assert enc.wait(60) == 0 and dec.returncode == 0, dec_err
    assert "input ended inside a sample: its 1 byte dropped" in enc.stderr.read().decode()
    assert len(out) == len(pcm) - 1 and dec_err == b""


def test_sigterm_to_the_encoder_closes_the_stream(model: Codec) -> None:
    """SIGTERM while the encoder waits for input: it sends the end packet, so the decoder ends
    with exit 0 and exactly the samples that went in; the encoder reports the signal (143)."""
    pcm = s16(speech(1.0, index=6))
    enc = spawn("stream-encode", stdin=subprocess.PIPE)
    dec = spawn("stream-decode", "-q", stdin=enc.stdout)
    enc.stdout.close()
    enc_err = Lines(enc.stderr)
    assert enc_err.seen.wait(120), enc_err.text
    os.write(enc.stdin.fileno(), pcm)
    final = len(pcm) - 2 * (model.latency - HOP)  # all but the look-ahead is out: the input was consumed
    got = read_until(dec.stdout.fileno(), final)
    assert len(got) == final, (len(got), enc_err.text)
    enc.send_signal(signal.SIGTERM)
    rest, dec_err = dec.communicate(timeout=120)
    assert enc.wait(60) == 128 + signal.SIGTERM and dec.returncode == 0, dec_err
    assert len(got + rest) == len(pcm)
    assert "stopped by SIGTERM" in enc_err.text and "Traceback" not in enc_err.text
    enc.stdin.close()


def test_sigterm_while_coding_still_ends_the_stream(tmp_path: Path) -> None:
    """SIGTERM while the encoder is busy coding (40 s of input from a file, read and coded in
    blocks of READ_SIZE bytes; the signal sent as soon as decoded audio comes out): the block
    under way is coded and sent, then the end packet. The decoder ends with exit 0 and no error,
    its output the whole blocks the encoder read; the encoder reports the signal (143)."""
    pcm = s16(speech(4.0, index=3)) * 10
    (tmp_path / "in.s16").write_bytes(pcm)
    with open(tmp_path / "in.s16", "rb") as f:
        enc = spawn("stream-encode", "-q", stdin=f)
    dec = spawn("stream-decode", "-q", stdin=enc.stdout)
    enc.stdout.close()
    got = read_until(dec.stdout.fileno(), 1)
    enc.send_signal(signal.SIGTERM)
    rest, dec_err = dec.communicate(timeout=300)
    enc_err = enc.stderr.read().decode()
    enc.stderr.close()
    assert got and enc.wait(60) == 128 + signal.SIGTERM and dec.returncode == 0, (dec_err, enc_err)
    assert dec_err == b"" and "stopped by SIGTERM" in enc_err and "Traceback" not in enc_err
    out = got + rest
    assert 0 < len(out) < len(pcm) and len(out) % READ_SIZE == 0  # s16 in and out: bytes = samples * 2


def test_signals_wait_for_the_chunk_under_way() -> None:
    """StopBetweenChunks: a signal during a chunk acts, by the handler it had before, once the
    chunk has ended; outside a chunk at once; a second one during a chunk at once, marking the
    chunk cut. The handlers are restored after."""

    class Stopped(Exception):
        pass

    def stop_here(signum: int, frame: object) -> None:
        raise Stopped(signum)

    old = signal.signal(signal.SIGHUP, stop_here)
    try:
        done = []
        with StopBetweenChunks() as stop:
            with pytest.raises(Stopped), stop.chunk():
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.05)  # the handler has run by now: it only noted the signal
                done.append("chunk")
            assert done == ["chunk"] and not stop.cut
            with pytest.raises(Stopped):
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.05)
            with pytest.raises(Stopped), stop.chunk():
                os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.05)
            assert stop.cut
        assert signal.getsignal(signal.SIGHUP) is stop_here
    finally:
        signal.signal(signal.SIGHUP, old)


def test_damaged_stream_is_one_error_line(exact_run: dict) -> None:
    """A flipped byte mid-stream: the audio before it comes out, then one error line, exit 2."""
    stream = bytearray(exact_run["stream"])
    stream[len(stream) // 2] ^= 0x10
    r = subprocess.run([*EXE, "stream-decode", "-q", "--pcm", "f32le"], input=bytes(stream), capture_output=True,
                       env=ENV, cwd=REPO, timeout=300, check=False)
    assert r.returncode == 2 and "the stream is damaged" in one_error_line(r.stderr)
    out = np.frombuffer(r.stdout, "<f4")
    assert 0 < len(out) < len(exact_run["audio"])
    assert np.abs(out[:-2 * HOP] - exact_run["audio"][: len(out) - 2 * HOP]).max() <= AUDIO_TOL


# ----- bad input, in process (fast) ---------------------------------------------------------------
def run_in_process(argv: list[str], stdin: bytes, capsysbinary, monkeypatch) -> tuple[int, bytes, str]:
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(stdin)})())
    code = main(argv)
    captured = capsysbinary.readouterr()
    return code, captured.out, captured.err.decode()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("other") / "model"
    tiny_model("ema").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("case", ["cut_in_packet", "no_end_packet", "lost_packet", "rvq_file", "empty",
                                  "other_model"])
def test_bad_streams_in_process(case: str, exact_run: dict, other_model: str, capsysbinary, monkeypatch) -> None:
    stream, h = exact_run["stream"], exact_run["stream"][:4]
    assert h == b"RVQL"
    size = LiveReader().feed(stream[:200])[0].size
    packet = LiveReader().feed(stream[:200])[0].frames_packet_size
    argv = ["stream-decode", "-q"]
    data, fragment = {
        "cut_in_packet": (stream[: size + 10 * packet + 7], "cut off inside a packet after frame 9"),
        "no_end_packet": (stream[: size + 10 * packet], "without its end packet after frame 9"),
        "lost_packet": (stream[: size + 3 * packet] + stream[size + 4 * packet :], "gap in the stream"),
        "rvq_file": (b"RVQC" + bytes(100), "codec decode"),
        "empty": (b"", "empty input"),
        "other_model": (stream, "another model"),
    }[case]
    if case == "other_model":
        argv += ["--model", other_model]
    code, out, err = run_in_process(argv, data, capsysbinary, monkeypatch)
    assert code == 2 and fragment in one_error_line(err)
    if case in ("cut_in_packet", "no_end_packet"):  # every complete frame, and the look-ahead's samples
        assert len(out) == 2 * 10 * HOP


@pytest.mark.parametrize(("args", "fragment"), [(["--stages", "13"], "out of range 1..12"),
                                                (["--header-every", "-1"], "0 or more seconds"),
                                                (["--bitrate", "100"], "below")])
def test_bad_options_in_process(args: list[str], fragment: str, capsysbinary, monkeypatch) -> None:
    code, out, err = run_in_process(["stream-encode", *args], b"", capsysbinary, monkeypatch)
    assert code == 2 and fragment in one_error_line(err) and out == b""


def test_empty_input_is_an_empty_stream(capsysbinary, monkeypatch) -> None:
    code, stream, err = run_in_process(["stream-encode", "-q"], b"", capsysbinary, monkeypatch)
    assert code == 0 and err == ""
    code, out, err = run_in_process(["stream-decode", "-q"], stream, capsysbinary, monkeypatch)
    assert code == 0 and out == b"" and err == ""


@pytest.mark.parametrize("command", ["stream-encode", "stream-decode"])
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "sox -d -t raw -r 16000 -e signed -b 16 -c 1 - | codec stream-encode | codec stream-decode" in text
    assert "--pcm" in text and "--model" in text
