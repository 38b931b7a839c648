"""The report's figures as images in the training run's TensorBoard events (the Images tab), so the run a
user opens in TensorBoard shows its loss curves and per-type scores beside its scalars.

The PNG files the report wrote go in as they are (no re-drawing), at the run's last step, into an
events file of their own (``*.report``) that the next report on the same run replaces: the Images
tab then shows the latest report, not one image per report written.
"""

import json
import struct
from pathlib import Path

REPORT_EVENTS_SUFFIX = ".report"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR header, which always comes first.

    >>> png_size(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\x00\\x00\\x00\\rIHDR" + struct.pack(">II", 640, 480))
    (640, 480)
    """
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def last_step(run_dir: Path) -> int:
    """The run's last optimizer step (its ``summary.json``), where its images are shown; 0 if unknown."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return int(summary.get("global_step") or 0)


def add_report_images(run_dir: Path, images: dict[str, Path]) -> None:
    """tag -> PNG file, written as image summaries into ``run_dir``'s events (replacing an earlier report's)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    for earlier in run_dir.glob(f"events.out.tfevents.*{REPORT_EVENTS_SUFFIX}"):
        earlier.unlink()
    step = last_step(run_dir)
    with SummaryWriter(log_dir=str(run_dir), filename_suffix=REPORT_EVENTS_SUFFIX) as writer:
        for tag, path in images.items():
            png = path.read_bytes()
            width, height = png_size(png)
            image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)  # 4: RGBA
            writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
