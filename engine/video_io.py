"""Reading and writing video files with PyAV (FFmpeg), torch-free.

Frames come out upright (a phone's rotation metadata applied), RGB float32 in [0, 1], at the size asked
for; `--frames A:B` seeks to A (FFmpeg seeks to the keyframe before it) and stops decoding after B, so a
short range of a long file decodes only that range. Writes are atomic (paths.atomic_writer): a video file
is there whole or not at all.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import heapq
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator

import av
import numpy as np

from styleengine import paths
from styleengine.choices import MIN_SIDE
from styleengine.errors import ConfigError, ImageError, first_line
from styleengine.engine.settings import whole

log = logging.getLogger(__name__)

# suffix -> (FFmpeg muxer, video codec, pixel format); each codec here ships in PyAV's wheels
CONTAINERS = {
    ".mp4": ("mp4", "libx264", "yuv420p"), ".mov": ("mov", "libx264", "yuv420p"),
    ".mkv": ("matroska", "libx264", "yuv420p"), ".webm": ("webm", "libvpx-vp9", "yuv420p"),
    ".avi": ("avi", "mpeg4", "yuv420p"), ".gif": ("gif", "gif", "rgb8"),
}
# audio codecs each muxer takes as they are (matroska takes any); others are re-encoded as AUDIO_CODEC says
COPYABLE = {"mp4": ("aac", "mp3", "opus", "ac3", "alac", "flac"), "mov": ("aac", "mp3", "alac", "ac3", "pcm_s16le"),
            "webm": ("opus", "vorbis"), "avi": ("mp3", "ac3", "pcm_s16le"), "gif": ()}
AUDIO_CODEC = {"mp4": "aac", "mov": "aac", "webm": "libopus", "avi": "libmp3lame"}
SOUND_NAMES = {"libopus": "opus", "libmp3lame": "mp3"}  # as the sound is named where it is read back
IDENTITY_BYTES = 1 << 20  # read from each end of a video for its identity
CRF = "18"  # x264: visually lossless; the stylised texture is all detail and suffers from the default 23


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int  # at `fps`: the header's count, else from its last packets' times, else its durations
    fps: Fraction  # the stream's average frame rate
    height: int  # upright (rotation applied)
    width: int
    rotation: int  # degrees counterclockwise the stored frames are turned for display
    audio: bool
    start: float  # seconds of the first video frame


def check_video_output(path: Path) -> str:
    """The muxer for `path`'s suffix (ConfigError for one this cannot write) after checking it can be written."""
    found = CONTAINERS.get(path.suffix.lower())
    if found is None:
        raise ConfigError(f"cannot write {path}: unknown video suffix {path.suffix or '(none)'!r}; use "
                          + ", ".join(CONTAINERS))
    paths.check_writable(path, "output video")
    return found[0]


def probe(path: Path) -> VideoInfo:
    """What a video file holds, read from its headers (nothing decoded); ImageError for a file that is not a
    video or has no frames."""
    problem = paths.input_problem("video", path)  # ROLE PATH PROBLEM, as every input's
    if problem is not None:
        raise ImageError(problem)
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                raise ImageError(f"not a video (no video stream): {path}")
            if container.format.name == "image2" or container.format.name.endswith("_pipe"):
                try:  # FFmpeg's image demuxer takes a name's suffix for what the file is
                    paths.header_shape(path, "input")
                except ImageError:
                    raise ImageError(f"not a video (or a format FFmpeg cannot read): {path}") from None
                raise ImageError(f"not a video (a still image; stylise it with `styleengine run`): {path}")
            stream = streams[0]
            if stream.codec_context is None:  # FFmpeg knows no decoder for what the header names (noise there?)
                raise ImageError(f"not a video (or a format FFmpeg cannot read): {path} (no decoder for its video "
                                 f"stream: damaged?)")
            if len(streams) > 1:  # another angle or a thumbnail track: dropped as a second sound stream is, said
                log.warning("%s has %d video streams: only the first is stylised", path, len(streams))
            fps = stream.average_rate or stream.guessed_rate
            if not fps:
                raise ImageError(f"cannot tell the frame rate of {path}")
            time_base = _time_base(stream)
            first = _first_frame(container, stream)  # before _stream_end, which leaves the container at the end
            # the first frame's time, not the stream's: an .avi's H.264 starts at its first decode time, a frame
            # before its first picture, and no frame was ever on screen at output frame 0's time
            start = float(first.pts * time_base) if first is not None and first.pts is not None else \
                float((stream.start_time or 0) * time_base)
            if container.format.flags & NO_TIMES:  # a raw stream (.h264, .m2v): its times are made up at a rate
                count = 0  # FFmpeg guesses (25 fps for an .m2v of 10)
            elif stream.frames:
                count = stream.frames
                if stream.duration and container.format.name.startswith("mov,"):  # an edit list (`-ss T -c copy`)
                    # hides the samples before T: the stream's duration is what it shows
                    count = min(count, int(math.floor(float(stream.duration * time_base) * fps + 0.5)))
            elif (end := _stream_end(container, stream, fps)) is not None:  # .mkv, .webm: no count in the headers
                count = int(math.floor((end - start) * fps + 0.5))
            elif stream.duration:
                count = int(math.floor(float(stream.duration * time_base) * fps + 0.5))
            elif container.duration:
                count = int(math.floor(container.duration / av.time_base * fps + 0.5))
            else:
                count = 0
            rotation = int(round(first.rotation / 90.0)) * 90 % 360 if first is not None and first.rotation else 0
            height, width = stream.codec_context.height, stream.codec_context.width
            audio = bool(container.streams.audio)
    except av.error.EOFError:
        raise ImageError(f"video {path} has no frames (or is cut short)") from None
    except av.error.FFmpegError as e:
        raise ImageError(f"not a video (or a format FFmpeg cannot read): {path} ({e.strerror or e})") from None
    if first is None:
        raise ImageError(f"video {path} has no frames")
    if count <= 0:  # a raw stream: frames without times, no count, no duration
        raise ImageError(f"cannot tell how many frames {path} holds, or their rate (its frames carry no times); put "
                         f"it in a container first, e.g. ffmpeg -r RATE -i {path.name} -c copy {path.stem}.mkv")
    if rotation in (90, -90):
        height, width = width, height
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"video {path} is {width}x{height} px; both sides must be at least {MIN_SIDE} px")
    return VideoInfo(Path(path), count, Fraction(fps), height, width, rotation, audio, start)


# the most frames H.264 or HEVC holds back before showing a picture (max_num_reorder_frames; MPEG-4 Part 2: 1)
REORDER = 16
NO_TIMES = 0x80  # AVFMT_NOTIMESTAMPS: a raw stream's demuxer, whose packets' times are its own guess
# seconds before where a seek to the end lands that are read again: where the format keeps no index (MPEG-TS,
# MPEG-PS) FFmpeg lands on any late packet, a B-frame sent after the last frame shown; this holds the last GOP
END_MARGIN = 10.0


def _stream_end(container: "av.container.InputContainer", stream: "av.VideoStream", fps: Fraction
                ) -> float | None:
    """When the stream's last frame leaves the screen (its time and one source frame, as `_on_screen` shows it),
    in seconds, from its last packets' times (nothing decoded); None where its packets carry none. Matroska's
    DURATION tag may be stale, zero or absent (a streamed .webm has no durations at all), and the container's
    duration is its longest stream's end, sound included."""
    base = _time_base(stream)
    times = []
    try:
        container.seek(1 << 62, backward=True, any_frame=False, stream=stream)
        landed = next(_packet_times(container, stream), None)
        if landed is not None:
            times.append(landed[0])
        # nothing after the landing (an .flv lands past its end): from the start
        container.seek(max(int((landed[1] - END_MARGIN) / base) if landed is not None else 0,
                           stream.start_time or 0), backward=True, any_frame=False, stream=stream)
    except av.error.FFmpegError:  # from the start where it can (the first frame's decode may have read them all)
        with contextlib.suppress(av.error.FFmpegError):
            container.seek(0)
    untimed = 0  # packets after the last timed one that carry no time (an MPEG-PS pack holds several frames)
    for at, _ in _packet_times(container, stream, untimed=True):
        if math.isnan(at):
            untimed += 1 if times else 0
        else:
            times.append(at)
            untimed = 0
    return max(max(times), times[-1] + untimed / float(fps)) + 1.0 / float(fps) if times else None


def _packet_times(container: "av.container.InputContainer", stream: "av.VideoStream", keys: bool = False,
                  untimed: bool = False) -> Iterator[tuple[float, float]]:
    """(pts, dts) in seconds of the stream's packets (`keys`: its keyframes') from where the container is, in
    decode order (dts as pts where it has none), skipping those without times (`untimed`: NaN for each); a file
    cut short ends them where it was cut."""
    base = _time_base(stream)
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and (packet.is_keyframe or not keys):
                yield float(packet.pts * base), float((packet.dts if packet.dts is not None else packet.pts) * base)
            elif untimed and packet.pts is None and packet.size:
                yield math.nan, math.nan
    except av.error.FFmpegError:
        return


def _time_base(stream: "av.VideoStream") -> Fraction:
    return stream.time_base or Fraction(1, 1000000)  # FFmpeg's own where a stream has none


def identity(info: VideoInfo) -> str:
    """The video's part of the settings hash, read cheaply: sha256 of its size, its first and last MiB and the
    stream's frame count, rate, size, rotation and start. A whole-file sha256 would read a 10-hour file before
    `--frames A:B` decodes its few frames; an edit keeping the size, both ends and the timing goes unseen."""
    size = os.path.getsize(info.path)
    h = hashlib.sha256()
    with open(info.path, "rb") as f:
        h.update(f.read(IDENTITY_BYTES))
        if size > IDENTITY_BYTES:
            f.seek(max(IDENTITY_BYTES, size - IDENTITY_BYTES))
            h.update(f.read(IDENTITY_BYTES))
    h.update(json.dumps([size, info.frames, str(info.fps), info.height, info.width, info.rotation,
                         info.start]).encode())
    return "video:" + h.hexdigest()


def _first_frame(container: "av.container.InputContainer", stream: "av.VideoStream") -> "av.VideoFrame | None":
    """The first frame (its side data holds the display rotation), or None for a stream without frames."""
    try:
        for frame in _decode(container, stream, _Damage(None)):  # damage is said by the read
            return frame
    except av.error.EOFError:
        pass
    return None


class _Damage:
    """Whether a read met a damaged file's packets, said once, as it is met (before any line a stop says)."""

    def __init__(self, path: Path | None, whole: bool = False, end: float = math.inf) -> None:
        self.path, self.whole, self.end, self.met = path, whole, end, False  # whole: read from the file's start

    def found(self, near: float | None, what: str) -> None:
        if not self.met and self.path is not None:
            where = ("" if near is None or near > self.end else  # a time the damage made: none said
                     f" near {near:.1f} s" if math.isfinite(near) else " at its start")
            log.warning("%s is damaged%s (%s): the frame before each gap is shown in its place", self.path, where,
                        what)
        self.met = True


def _decode(container: "av.container.InputContainer", stream: "av.VideoStream", damage: _Damage
            ) -> Iterator["av.VideoFrame"]:
    """The stream's frames from where the container is, past what a damaged file holds (as FFmpeg goes on: the
    frame before a gap stays on screen in its place): packets the decoder refuses, and the end where the
    demuxer can read no further. Pictures fewer than packets are said too for an .avi read from its start: its
    frames' times are its packets' sorted, and one lost moves the later ones."""
    base, good, sent, got = _time_base(stream), -math.inf, 0, 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except (StopIteration, av.error.EOFError):
            break
        except av.error.FFmpegError as e:  # noise where the demuxer reads a box's or a chunk's size
            damage.found(good, f"nothing after it could be read: {e.strerror or first_line(e)}")
            with contextlib.suppress(av.error.FFmpegError):  # the frames the decoder still holds
                yield from stream.decode(None)
            return
        try:
            frames = packet.decode()
        except av.error.EOFError:
            break
        except av.error.FFmpegError:
            damage.found(good, "the decoder refused a packet")
            continue
        if packet.size and not packet.is_discard:
            sent += 1
            if packet.pts is not None:
                good = float(packet.pts * base)
        got += len(frames)
        yield from frames
    if container.format.name == "avi" and got < sent and damage.whole:
        damage.found(None, f"{sent - got} picture(s) fewer than its packets: later frames may show a picture early")


def frame_range(spec: str | None, count: int, path: Path) -> tuple[int, int]:
    """--frames A:B (B excluded, either side may be left out) as (start, stop) within the video's `count`
    frames; ConfigError for a range that is empty or past the end."""
    if spec is None:
        return 0, count
    if not spec.strip():  # `--frames "$RANGE"` with RANGE unset ran the whole clip
        raise ConfigError("--frames is empty; give A:B, or leave the flag out for the whole clip")
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start = whole(parts[0]) if parts[0].strip() else 0  # int() took "0_1" as 1
        stop = whole(parts[1]) if parts[1].strip() else count
    except ValueError:
        raise ConfigError(f"--frames must be A:B (frame numbers, B excluded), got {spec!r}") from None
    if start < 0 or (stop <= start and start < count):
        raise ConfigError(f"--frames {spec} is empty: it needs 0 <= A < B")
    if start >= count or stop > count:  # `5:` of a 3-frame clip: past its end, not an empty range
        raise ConfigError(f"--frames {spec} is past the end of {path} ({count} frames)")
    return start, stop


def output_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the long side `size`, each side even (4:2:0 video needs even sides)."""
    scale = size / max(height, width)
    return (max(MIN_SIDE, int(round(height * scale)) // 2 * 2),
            max(MIN_SIDE, int(round(width * scale)) // 2 * 2))


def source_frames(info: VideoInfo, start: int, stop: int, fps: Fraction) -> int:
    """How many source frames output frames start..stop-1 at `fps` show, by read_frames' rule (the frame on screen
    at each one's time, within half a source frame): fewer than stop - start where one is shown more than once."""
    if fps <= info.fps:  # a source frame's time apart or more: each shows another
        return stop - start
    last = max(info.frames - 1, 0)  # the last source frame stays on screen to the end
    half = 0.5 / float(info.fps)

    def shown(index: int) -> int:  # read_frames' float sums: a tie (--fps twice the clip's) goes its way
        at = info.start + index / float(fps) + half
        source = min(math.floor(index * info.fps / fps + Fraction(1, 2)), last)
        while source > 0 and info.start + source / float(info.fps) > at:
            source -= 1
        while source < last and info.start + (source + 1) / float(info.fps) <= at:
            source += 1
        return source

    return shown(stop - 1) - shown(start) + 1  # less than a frame apart: every one between is shown


def read_frames(info: VideoInfo, start: int, stop: int, fps: Fraction, shape: tuple[int, int]
                ) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame) for output frames start..stop-1 at `fps`: each the source frame shown at its time,
    upright, resized to `shape` (height, width), RGB float32 in [0, 1]. Seeks to `start`; stops decoding
    once past `stop`."""
    height, width = shape
    turned = info.rotation in (90, 270)
    size = (height, width) if not turned else (width, height)  # scaled before turning, as stored
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        damage = _Damage(info.path, whole=not _seek(container, stream, info, start, fps),
                         end=info.start + (info.frames + 1) / float(info.fps))
        decoded = _timed(_decode(container, stream, damage), stream, info.fps)
        if container.format.name == "avi":
            decoded = _display_times(decoded)
        timed = _in_order(((float(at * stream.time_base), frame) for at, frame in decoded), info.path, damage)
        last: Any = None
        for index, frame in _on_screen(timed, info, start, stop, fps):
            if frame is not last:  # a repeat is the same picture: converted once
                last, picture = frame, _picture(frame, size, info.rotation)
            yield index, picture


def _timed(frames: Iterator["av.VideoFrame"], stream: "av.VideoStream", fps: Fraction
           ) -> Iterator[tuple[int, Any]]:
    """(time in the stream's time base, frame): a frame that carries no time (an MPEG-PS pack of several frames
    times its first) one frame after the one before it."""
    step = max(1, round(1 / (fps * _time_base(stream))))
    last: int | None = None
    for frame in frames:
        at = frame.pts if frame.pts is not None else None if last is None else last + step
        if at is not None:
            last = at
            yield at, frame


def _display_times(decoded: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """(time, frame) for frames in display order that carry their decode times (an .avi keeps no other: H.264 with
    B-frames gives its pictures in display order under times out of order): each the next of the times sorted,
    among the frames REORDER ahead (a picture waits at most that many); frames in order keep their own."""
    waiting: collections.deque[Any] = collections.deque()
    times: list[int] = []
    for at, frame in decoded:
        waiting.append(frame)
        heapq.heappush(times, at)
        if len(waiting) > REORDER:
            yield heapq.heappop(times), waiting.popleft()
    while waiting:
        yield heapq.heappop(times), waiting.popleft()


def _in_order(timed: Iterator[tuple[float, Any]], path: Path, damage: _Damage) -> Iterator[tuple[float, Any]]:
    """`timed` as it comes, but for a frame whose time goes back (held in a damaged file's decoder past its gap, or
    timed wrong by its muxer; an .avi's decode times are sorted out by _display_times): dropped, said as damage."""
    last = -math.inf
    for at, frame in timed:
        if at < last:  # a frame a damaged file's decoder gave late (or a muxer timed wrong): never shown
            damage.found(last, "a frame whose time goes back: dropped")
            continue
        last = at
        yield at, frame


def repeats(info: VideoInfo, start: int, stop: int, fps: Fraction) -> tuple[int, int]:
    """(output frames, source frames they show) for output frames start..stop-1 at `fps`, by read_frames' rule
    on the frames' timestamps: read from the packets (nothing decoded), so a variable-rate clip's repeats are
    told before any frame is stylised."""
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        _seek(container, stream, info, start, fps)
        # packets come in decode order (dts <= pts): past this dts no frame shown in the range is left
        bound = info.start + stop / float(fps) + 1.0 / float(info.fps)
        times, more = [], False
        for at, decoded in _packet_times(container, stream):  # a file cut short: to there; its decode says the rest
            times.append(at)
            if decoded > bound:
                more = True
                break
    times.sort()
    if more:  # the frames after the bound: read_frames shows the range's last one until the next comes
        times.append(math.inf)
    shown = [at for _, at in _on_screen(((t, t) for t in times), info, start, stop, fps)]
    return len(shown), len(set(shown))


def _seek(container: "av.container.InputContainer", stream: "av.VideoStream", info: VideoInfo, start: int,
          fps: Fraction) -> bool:
    """To output frame `start`'s time (FFmpeg lands on the keyframe before it); nothing for the first frame.
    Whether it landed after the file's start."""
    if start and container.format.name != "mpeg":  # MPEG-PS: times read after a seek come from a pack cut
        # within (half a frame late, and frames that carry none): read from the start
        begin = info.start + start / float(fps)
        base = _time_base(stream)  # as probe() reads the start
        at = int(max(0.0, begin - info.start) / base) + (stream.start_time or 0)
        container.seek(at, stream=stream, backward=True)
        # where the format keeps no index (MPEG-TS) FFmpeg lands on any packet near the time, and the first
        # keyframe after it may come after frame `start`, which then is never on screen: from the start
        key = next(_packet_times(container, stream, keys=True), None)
        if key is not None and key[0] <= begin + 0.5 / float(info.fps):
            if container.format.name == "avi":  # its index holds decode times: the keyframe landed on may be
                # shown after frames sent after it (an open GOP's B-frames), which need the keyframe before it
                at = int(key[1] / base) - 1
            try:
                container.seek(at, stream=stream, backward=True)
                if container.format.name == "avi":  # one without its index (a recording cut short) goes back
                    back = next(_packet_times(container, stream, keys=True), None)  # no further: from the start
                    if back is None or back[1] >= key[1]:
                        container.seek(0)
                        return False
                    container.seek(at, stream=stream, backward=True)
            except av.error.FFmpegError:  # nothing before the first keyframe
                container.seek(0)
                return False
            return True
        else:  # before the file's start: a seek to the stream's first time may land after its first keyframe
            # (dts < pts), and a .ts whose clock wrapped starts before 0
            try:
                container.seek(min(stream.start_time or 0, 0) - int(END_MARGIN / base), stream=stream, backward=True)
            except av.error.FFmpegError:  # a format that takes no time before 0 (.flv)
                container.seek(0)
    return False


def _on_screen(timed: Iterable[tuple[float, Any]], info: VideoInfo, start: int, stop: int, fps: Fraction
               ) -> Iterator[tuple[int, Any]]:
    """(index, item) for output frames start..stop-1 at `fps`, from (seconds, item) in presentation order: each
    the item on screen at the frame's time (the last at or before it, within half a source frame)."""
    half = 0.5 / float(info.fps)  # a frame's time is matched within half a source frame
    index, shown, t = start, None, 0.0
    for t, item in timed:
        while index < stop and t > info.start + index / float(fps) + half and shown is not None:
            yield index, shown  # the frame on screen at output frame `index`'s time
            index += 1
        if index >= stop:
            return
        if t <= info.start + index / float(fps) + half:
            shown = item
    while index < stop and shown is not None:  # the last source frame stays on screen to the end
        yield index, shown
        index += 1
        if info.start + index / float(fps) > t + 1.0 / float(info.fps):
            return


def _picture(frame: "av.VideoFrame", size: tuple[int, int], rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24", width=size[1], height=size[0], interpolation="AREA")
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return np.ascontiguousarray(rgb, dtype=np.float32) / 255.0


def write_video(path: Path, frames: Iterable[np.ndarray], fps: Fraction, *, audio: VideoInfo | None = None,
                span: tuple[float, float] | None = None) -> int:
    """Encode (H, W, 3) frames (uint8, or float in [0, 1]) into `path` at `fps`, atomically; with `audio`, its
    sound over `span` (seconds of the source) is copied, or re-encoded where the container cannot hold it.
    The number of frames written. A video of no frames is not written (ValueError)."""
    muxer, codec, pix_fmt = CONTAINERS[path.suffix.lower()]
    count = 0
    path = paths.written_through(path)  # a link at -o: its file replaced, as every atomic write does
    with paths.temp_beside(path) as (fd, tmp):
        os.close(fd)  # FFmpeg writes it by name: through a Python file, a full disk printed PyAV's dropped traceback
        with av.open(tmp, "w", format=muxer) as out:
            stream = None
            audio_in = None
            for frame in frames:
                rgb = np.asarray(frame)
                if rgb.dtype != np.uint8:
                    rgb = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
                if stream is None:
                    stream = out.add_stream(codec, rate=fps)
                    stream.height, stream.width = rgb.shape[:2]
                    stream.pix_fmt = pix_fmt
                    if codec == "libx264":
                        stream.options = {"crf": CRF}
                    if audio is not None and audio.audio and muxer != "gif":
                        audio_in = _AudioCopy(audio.path, out, muxer, span)
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                    out.mux(packet)
                count += 1
            if stream is None:
                raise ValueError("no frames to write")
            for packet in stream.encode():
                out.mux(packet)
            if audio_in is not None:
                if span is not None:  # the frames ran out early (a caller's iterator ended): the sound ends with them
                    audio_in.span = (span[0], min(span[1], span[0] + count / float(fps)))
                audio_in.copy()
        os.replace(tmp, path)
    return count


def encoder_rate(codec: str, rate: int) -> int:
    """The sample rate `codec` encodes sound of `rate` Hz at: that rate where the encoder takes it, else the nearest
    it takes above (nothing of the sound lost), else its highest (libopus takes 8 to 48 kHz, no 44.1)."""
    rates = av.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r >= rate]
    return min(above) if above else max(rates)


def check_sound(info: VideoInfo, path: Path, span: tuple[float, float]) -> None:
    """Before any frame is made: whether the sound of `info` over `span` (seconds of the source) goes into the
    video at `path` as write_video will put it there, tried on its first half second in memory (ConfigError where
    it cannot); a GIF, which holds no sound, is said in a warning, as are sound streams after the first (not kept)
    and channels mixed down to stereo by a re-encode."""
    if not info.audio:
        return
    muxer = CONTAINERS[path.suffix.lower()][0]
    if muxer == "gif":
        log.warning("GIF holds no sound: the sound of %s is not in %s", info.path, path)
        return
    sound, streams, mixed = None, 1, None
    try:
        with av.open(io.BytesIO(), "w", format=muxer) as out:
            sound = _AudioCopy(info.path, out, muxer, (span[0], min(span[1], span[0] + 0.5)))
            out.start_encoding()  # the encoder opened, as the first frame's packet would, even with no sound here
            streams, mixed = len(sound.input.streams.audio), sound.mixed
            sound.copy()
    except av.error.FFmpegError as e:
        if muxer == "matroska":  # which takes any sound as it is: the sound read is what failed (damaged?)
            raise ConfigError(f"cannot copy the sound of {info.path} ({first_line(e)}: damaged?); make a copy "
                              f"without it first, e.g. ffmpeg -i {info.path.name} -an -c copy "
                              f"{info.path.stem}-silent{info.path.suffix}") from None
        raise ConfigError(f"cannot put the sound of {info.path} into {path.name} ({first_line(e)}); choose .mkv, "
                          f"which keeps any sound as it is") from None
    finally:
        if sound is not None:  # copy() closes it; an encoder refused before it is not
            sound.input.close()
    if streams > 1:
        log.warning("%s has %d sound streams: only the first is kept in %s", info.path, streams, path)
    if mixed is not None:
        log.warning("the sound of %s has %d channels: they are mixed down to stereo for %s's encoder (%s); .mkv "
                    "keeps them", info.path, mixed, path, SOUND_NAMES.get(AUDIO_CODEC[muxer], AUDIO_CODEC[muxer]))


class _AudioCopy:
    """The source's first audio stream over a span of seconds into an output container: packets copied where
    the container takes the codec (COPYABLE), else decoded and re-encoded."""

    def __init__(self, source: Path, out: "av.container.OutputContainer", muxer: str,
                 span: tuple[float, float] | None):
        self.out, self.span = out, span
        self.input = av.open(str(source))
        self.stream_in = self.input.streams.audio[0]
        self.stream_out: Any = None
        self.resampler = None
        self.mixed: int | None = None  # the source's channel count where the re-encode mixes them down to stereo
        codec = self.stream_in.codec_context.name
        if muxer == "matroska" or codec in COPYABLE.get(muxer, ()):
            self.stream_out = out.add_stream_from_template(self.stream_in)
            return
        heard = self.stream_in.codec_context.sample_rate or 48000
        rate = encoder_rate(AUDIO_CODEC[muxer], heard)
        self.stream_out = out.add_stream(AUDIO_CODEC[muxer], rate=rate)
        layout = self.stream_in.codec_context.layout
        # by the count: a PCM stream's layout may be "1 channels" (no order named), which aac refuses
        self.stream_out.layout = "mono" if layout is not None and layout.nb_channels == 1 else "stereo"
        if layout is not None and layout.nb_channels > 2:
            self.mixed = layout.nb_channels
        self.resampler = av.AudioResampler(format=self.stream_out.codec_context.format, layout=self.stream_out.layout,
                                           rate=rate, frame_size=self.stream_out.codec_context.frame_size or None)
        log.info("audio: %s at %d Hz re-encoded as %s at %d Hz for %s", codec, heard, AUDIO_CODEC[muxer], rate, muxer)

    def copy(self) -> None:
        try:
            begin, end = self.span if self.span is not None else (0.0, math.inf)
            base = self.stream_in.time_base or Fraction(1, self.stream_in.codec_context.sample_rate or 48000)
            if begin > 0:
                self.input.seek(int(begin / base), stream=self.stream_in, backward=True)
            offset = None
            for packet in self.input.demux(self.stream_in):
                if packet.pts is None or packet.dts is None:
                    continue
                t = float(packet.pts * base)
                if t < begin - 1e-6:
                    continue
                if t >= end:
                    break
                if offset is None:
                    offset = packet.pts - int(round(begin / base))
                if self.resampler is None:
                    packet.pts -= offset
                    packet.dts -= offset
                    packet.stream = self.stream_out
                    self.out.mux(packet)
                else:
                    for frame in packet.decode():
                        frame.pts = None
                        for part in self.resampler.resample(frame):
                            self.out.mux(self.stream_out.encode(part))
            if self.resampler is not None:
                for part in self.resampler.resample(None):
                    self.out.mux(self.stream_out.encode(part))
                self.out.mux(self.stream_out.encode(None))
        finally:
            self.input.close()
