"""The evaluation report: one self-contained HTML file a person can open anywhere.

Everything is inline (CSS, SVG charts, JPEG images as data URIs), so the file renders offline, as a
Vertex/Kubeflow HTML artifact, or from a bucket. Each class keeps one colour everywhere
(overlays, legend, bar chart); "none" (class 0) and unlabelled pixels are left untinted so the
photo shows through where no class is claimed.
"""

import base64
import colorsys
import html
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from image_segmentation.evaluation.metrics import PER_CLASS

THUMBNAIL_WIDTH = 360
OVERLAY_ALPHA = 0.55
JPEG_QUALITY = 90
NAME_CHARS = 34  # longer class names are shortened in charts (full name in the tooltip)
SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Example:
    """One validation image for the report, already shrunk to thumbnail size."""

    name: str
    image: np.ndarray  # uint8 [h, w, 3]
    truth: np.ndarray  # uint8 [h, w] class ids (255: unlabelled)
    prediction: np.ndarray  # uint8 [h, w] class ids
    pixel_accuracy: float  # at full resolution, all labelled pixels


def palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3]: a fixed colour per class, neighbours far apart in hue.

    Hues step by the golden angle, so any run of consecutive classes gets distinct colours;
    saturation and brightness alternate to separate classes whose hues come close again.
    Class 0 ("none") is grey: it is never painted on the images.
    """
    colors = [(128, 128, 128)]
    for index in range(1, num_classes):
        hue = (index * 0.381966) % 1.0
        saturation = (0.85, 0.55)[index % 2]
        value = (0.95, 0.75, 0.85)[index % 3]
        colors.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.array(colors, dtype=np.uint8)


def hex_color(color: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in color))


def make_example(
    name: str,
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    width: int = THUMBNAIL_WIDTH,
) -> Example:
    """Score one image at full resolution where it is labelled and predicted (a model that
    centre-crops predicts no class outside its window), then shrink it (masks with nearest
    neighbour)."""
    labelled = (truth < num_classes) & (prediction < num_classes)
    correct = np.count_nonzero((truth == prediction) & labelled)
    accuracy = correct / np.count_nonzero(labelled) if labelled.any() else math.nan
    height, original_width = truth.shape
    size = (width, max(1, round(height * width / original_width)))
    if original_width <= width:
        size = (original_width, height)
    photo = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)

    def shrink(mask: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))

    return Example(name, np.asarray(photo), shrink(truth), shrink(prediction), accuracy)


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The photo with each class > 0 tinted in its colour; class 0 and unlabelled untouched."""
    tinted = mask.astype(np.int64)
    painted = (tinted > 0) & (tinted < len(colors))
    layer = colors[np.where(painted, tinted, 0)].astype(np.float32)
    blend = image.astype(np.float32) * (1 - OVERLAY_ALPHA) + layer * OVERLAY_ALPHA
    return np.where(painted[..., None], blend, image).round().astype(np.uint8)


def data_uri(pixels: np.ndarray) -> str:
    """A JPEG data URI of an RGB image: the panels are photos, for which JPEG is about ten
    times smaller than PNG (12 examples: about 1 MB instead of 6)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def class_chart(labels: list[str], summary: dict, colors) -> str:
    """Horizontal SVG bars per class: its IoU in the class colour, under it its precision (dark)
    and recall (light), so a low IoU shows whether the class is missed or over-predicted."""
    row, label_width, bar_width, left = 30, 250, 480, 276
    height = row * len(labels) + 40
    parts = [
        f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{left + bar_width + 70}" '
        f'height="{height}" role="img" aria-label="per-class IoU, precision and recall">'
    ]
    for tick in range(0, 101, 25):
        x = left + bar_width * tick / 100
        parts.append(
            f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 30}" class="grid"/>'
            f'<text x="{x}" y="{height - 12}" text-anchor="middle" class="tick">{tick}%</text>'
        )
    for index, label in enumerate(labels):
        y = index * row + 4
        iou, precision, recall = (summary[f"class_{kind}"][label] for kind in PER_CLASS)
        name = html.escape(label)
        parts.append(
            f"<g><title>{name}: IoU {_percent(iou)}, precision {_percent(precision)}, "
            f"recall {_percent(recall)}</title>"
            f'<text x="{label_width}" y="{y + 14}" text-anchor="end">'
            f"{html.escape(_short(label))}</text>"
            f'<rect x="{label_width + 6}" y="{y + 3}" width="11" height="11" '
            f'fill="{hex_color(colors[index])}" stroke="#333" stroke-width="0.5"/>'
        )
        for value, top, tall, fill in (
            (iou, y, 15, hex_color(colors[index])),
            (precision, y + 17, 4, "#555"),
            (recall, y + 22, 4, "#aaa"),
        ):
            if value is not None:
                parts.append(
                    f'<rect x="{left}" y="{top}" width="{bar_width * value:.1f}" '
                    f'height="{tall}" fill="{fill}" stroke="#333" stroke-width="0.3"/>'
                )
        x = left + bar_width * (iou or 0) + 6
        parts.append(f'<text x="{x:.1f}" y="{y + 14}" class="value">{_percent(iou)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def class_table(labels: list[str], summary: dict) -> str:
    """Each class's IoU, precision, recall and share of the scored pixels."""
    total = sum(summary["class_pixels"].values()) or 1
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_percent(summary[f'class_{kind}'][label])}</td>" for kind in PER_CLASS)
        + f"<td>{_percent(summary['class_pixels'][label] / total)}</td></tr>"
        for label in labels
    )
    return (
        '<table class="headline"><tr><th>class</th><th>IoU</th><th>precision</th>'
        f"<th>recall</th><th>share of pixels</th></tr>{rows}</table>"
    )


def nice_step(span: float, intervals: int = 4) -> float:
    """A round grid step (1, 2, 2.5 or 5 times a power of ten) for about `intervals` lines."""
    raw = span / intervals if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= raw)


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], y_max=None) -> str:
    """An SVG chart of per-epoch values, one polyline (with dots) per named series; the
    legend sits above the plot so it never hides a curve."""
    width, left, right, bottom, plot_height = 540, 56, 16, 40, 190
    top = 40 + 16 * len(series)
    height = top + plot_height + bottom
    points = [point for values in series.values() for point in values]
    x_low = min(x for x, _ in points)
    x_high = max(max(x for x, _ in points), x_low + 1)
    step = nice_step(y_max if y_max is not None else max(y for _, y in points))
    y_high = (
        y_max if y_max is not None else step * max(1, math.ceil(max(y for _, y in points) / step))
    )

    def place(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (width - left - right),
            top + (1 - y / y_high) * plot_height,
        )

    parts = [
        f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="{left}" y="18" class="title">{html.escape(title)}</text>'
    ]
    for line in range(round(y_high / step) + 1):
        value = line * step
        _, y = place(x_low, value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{value:g}</text>"
        )
    epochs = sorted({x for x, _ in points})
    stride = max(1, math.ceil(len(epochs) / 10))
    for epoch in epochs[::stride]:
        x, _ = place(epoch, 0)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" class="tick">'
            f"{epoch:g}</text>"
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle" '
        f'class="tick">epoch</text>'
    )
    for number, (name, values) in enumerate(series.items()):
        color = SERIES_COLORS[number % len(SERIES_COLORS)]
        placed = [place(x, y) for x, y in values]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in placed)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in placed]
        legend_y = 38 + 16 * number
        parts.append(
            f'<rect x="{left}" y="{legend_y - 5}" width="14" height="3" fill="{color}"/>'
            f'<text x="{left + 20}" y="{legend_y}" class="tick">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def training_curves(history: list[dict]) -> str:
    """Loss and validation metrics per epoch from history.json, or a note when there are none."""

    def series(key: str) -> list[tuple[float, float]]:
        return [
            (float(entry.get("epoch", number + 1)), float(entry[key]))
            for number, entry in enumerate(history)
            if isinstance(entry.get(key), int | float) and math.isfinite(entry[key])
        ]

    losses = {name: values for name in ("loss",) if (values := series(name))}
    scores = {
        label: values
        for key, label in (
            ("val_miou", "val mean IoU"),
            ("val_pixel_accuracy", "val pixel accuracy"),
        )
        if (values := series(key))
    }
    charts = []
    if losses:
        charts.append(line_chart("training loss", losses))
    if scores:
        charts.append(line_chart("validation (during training)", scores, y_max=1.0))
    if not charts:
        return '<p class="note">No training history (history.json) in the model directory.</p>'
    return '<div class="curves">' + "".join(charts) + "</div>"


def _legend(labels: list[str], colors: np.ndarray) -> str:
    items = []
    for index, label in enumerate(labels):
        note = " (not painted)" if index == 0 else ""
        items.append(
            f'<li><span class="swatch" style="background:{hex_color(colors[index])}"></span>'
            f"{index}: {html.escape(label)}{note}</li>"
        )
    return '<ul class="legend">' + "".join(items) + "</ul>"


def _examples(examples: list[Example], colors: np.ndarray) -> str:
    cards = []
    for example in examples:
        panels = (
            ("image", example.image),
            ("ground truth", overlay(example.image, example.truth, colors)),
            ("prediction", overlay(example.image, example.prediction, colors)),
        )
        figures = "".join(
            f'<figure><img src="{data_uri(pixels)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
            for caption, pixels in panels
        )
        cards.append(
            f'<section class="example"><h3>{html.escape(example.name)} '
            f'<span class="score">pixel accuracy {_percent(example.pixel_accuracy)}'
            "</span></h3>"
            f'<div class="panels">{figures}</div></section>'
        )
    return '<div class="examples">' + "".join(cards) + "</div>"


def _headline(summary: dict) -> str:
    return (
        '<table class="headline"><tr><th>mean IoU</th><th>pixel accuracy</th>'
        "<th>classes scored</th><th>pixels scored</th></tr>"
        f"<tr><td>{_percent(summary['miou'])}</td><td>{_percent(summary['pixel_accuracy'])}</td>"
        f"<td>{summary['classes_scored']}</td><td>{summary['pixels_scored']:,}</td></tr></table>"
    )


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
  color: #222; background: #fafafa; }
h1 { margin: 0 0 4px; } h2 { margin: 28px 0 10px; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin: 0; font-size: 14px; }
.gate { font-size: 20px; margin: 14px 0; }
table.headline { border-collapse: collapse; background: #fff; }
table.headline th, table.headline td { border: 1px solid #ddd; padding: 6px 12px;
  text-align: right; }
table.headline th:first-child { text-align: left; }
.legend { list-style: none; padding: 0; margin: 0; columns: 4 220px; font-size: 14px; }
.legend li { margin: 2px 0; break-inside: avoid; }
.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 6px;
  vertical-align: -2px; border: 1px solid #333; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr));
  gap: 16px; }
.example { background: #fff; border: 1px solid #ddd; padding: 8px; }
.example h3 { font-size: 14px; margin: 0 0 6px; word-break: break-all; }
.score { font-weight: normal; color: #555; margin-left: 8px; }
.panels { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
figure { margin: 0; } figure img { width: 100%; display: block; image-rendering: auto; }
figcaption { font-size: 12px; color: #555; text-align: center; }
svg text { font-size: 12px; fill: #222; } svg .tick { font-size: 11px; fill: #555; }
svg .title { font-size: 14px; font-weight: bold; } svg .grid { stroke: #e3e3e3; }
svg .value { font-size: 11px; }
.curves { display: flex; flex-wrap: wrap; gap: 16px; }
.curves svg, svg.bars { background: #fff; border: 1px solid #ddd; }
.note { color: #555; font-style: italic; }
"""


def render(
    summary: dict,
    labels: list[str],
    examples: list[Example],
    history: list[dict],
    details: dict[str, str],
) -> str:
    """The whole report as one HTML document.

    `summary` is metrics.summary(); `details` are (name, value) lines shown under the title
    (model, data, images scored).
    """
    colors = palette(len(labels))
    meta = "".join(
        f'<p class="meta">{html.escape(k)}: {html.escape(str(v))}</p>' for k, v in details.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Segmentation evaluation: mean IoU {_percent(summary["miou"])}</title>
<style>{STYLE}</style></head>
<body>
<h1>Segmentation evaluation</h1>
{meta}
<p class="gate">Mean IoU (the quality gate): <b>{_percent(summary["miou"])}</b>
&nbsp; pixel accuracy {_percent(summary["pixel_accuracy"])}</p>
<p class="meta">Every labelled pixel is scored, "none" (the classes not on the whitelist)
included; only pixels ADE20K leaves unlabelled are not.</p>
{_headline(summary)}
<h2>Classes</h2>
{_legend(labels, colors)}
<h2>Validation images ({len(examples)})</h2>
{_examples(examples, colors) if examples else '<p class="note">No images requested.</p>'}
<h2>Per class</h2>
<p class="meta">Per class: IoU (the bar in the class colour), precision (dark: how much of
what the model calls the class is the class) and recall (light: how much of the class it finds).
Low precision is a class smeared over others; low recall, a class missed. Classes absent from
both the ground truth and the predictions have no IoU (n/a) and are left out of the mean.</p>
{class_chart(labels, summary, colors)}
{class_table(labels, summary)}
<h2>Training curves</h2>
{training_curves(history)}
</body></html>
"""
