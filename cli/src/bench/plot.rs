//! Grouped bar charts as hand-written SVG, and their conversion to PNG.
//!
//! The benchmarks draw their results with this instead of a plotting library: a
//! [`BarChart`] has a title, axis labels, one group of bars per x category, one bar
//! per series in each group (with a legend and the value printed above each bar),
//! optional per-group markers such as targets (dashed lines), and a linear or
//! logarithmic y axis. [`BarChart::to_svg`] and [`stacked_svg`] (charts one above
//! the other in one picture) are pure functions; [`write_png`] and
//! [`write_stacked_png`] write the SVG and convert it to PNG with `rsvg-convert`
//! (Debian package `librsvg2-bin`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// One series: a bar in every group (`None`: no bar, `n/a` printed instead).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A horizontal dashed line across one group's bars, e.g. a target; its value is
/// printed at the line's left end, and `label` goes into the legend once.
#[derive(Debug, Clone)]
pub struct Marker {
    pub group: usize,
    pub value: f64,
    pub label: String,
}

/// A grouped bar chart.
#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    /// A second, smaller title line (e.g. the command and the date).
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    /// The x categories, left to right.
    pub groups: Vec<String>,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    /// Most decimals of the value printed above each bar (fewer for large values).
    pub decimals: usize,
    /// A logarithmic y axis, for values that span orders of magnitude.
    pub log_scale: bool,
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 120.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;
const BASE: f64 = HEIGHT - BOTTOM;
/// Share of a group's width left empty on each side of its bars.
const GROUP_PAD: f64 = 0.11;
const FONT: &str = "DejaVu Sans, Arial, sans-serif";
const MARKER_COLOUR: &str = "#c00";

/// Colour-blind-friendly (Okabe–Ito), then repeated.
const PALETTE: [&str; 8] = [
    "#0072B2", "#56B4E9", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#F0E442", "#999999",
];

/// The y axis: where a value sits (0 at the bottom, 1 at the top) and the ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct YAxis {
    log: bool,
    low: f64,
    high: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    /// A linear axis from 0 with "nice" steps (1, 2, 2.5 or 5 × a power of ten, at
    /// most 8 ticks), with room above `max` for the bar labels.
    pub fn linear(max: f64) -> YAxis {
        if !max.is_finite() || max <= 0.0 {
            return YAxis {
                log: false,
                low: 0.0,
                high: 1.0,
                ticks: (0..=5).map(|tick| f64::from(tick) * 0.2).collect(),
            };
        }
        let wanted = max * 1.12;
        let raw_step = wanted / 8.0;
        let power = 10f64.powf(raw_step.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|factor| factor * power)
            .find(|step| *step >= raw_step)
            .unwrap_or(10.0 * power);
        let count = (wanted / step).ceil() as usize;
        YAxis {
            log: false,
            low: 0.0,
            high: count as f64 * step,
            ticks: (0..=count).map(|tick| tick as f64 * step).collect(),
        }
    }

    /// A logarithmic axis over whole powers of ten around `min..max` (positive
    /// values), ticks at 1, 2 and 5 × each power.
    pub fn log(min: f64, max: f64) -> YAxis {
        let min = if min.is_finite() && min > 0.0 {
            min
        } else {
            1.0
        };
        let max = if max.is_finite() && max > min {
            max
        } else {
            min * 10.0
        };
        let low = 10f64.powf(min.log10().floor());
        let high = 10f64.powf((max * 1.4).log10().ceil());
        let mut ticks = Vec::new();
        let mut power = low;
        while power < high && ticks.len() < 60 {
            ticks.extend([1.0, 2.0, 5.0].map(|factor| factor * power));
            power *= 10.0;
        }
        ticks.push(high);
        YAxis {
            log: true,
            low,
            high,
            ticks,
        }
    }

    /// Where `value` sits, 0 (bottom) to 1 (top), clamped.
    pub fn fraction(&self, value: f64) -> f64 {
        let fraction = match self.log {
            true if value <= 0.0 => 0.0,
            true => (value / self.low).ln() / (self.high / self.low).ln(),
            false => (value - self.low) / (self.high - self.low),
        };
        fraction.clamp(0.0, 1.0)
    }

    fn y(&self, value: f64) -> f64 {
        TOP + PLOT_H * (1.0 - self.fraction(value))
    }
}

impl BarChart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let axis = self.y_axis();
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"{FONT}\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let centre = WIDTH / 2.0;
        text(&mut svg, centre, 28.0, MIDDLE_BOLD_20, &self.title);
        text(&mut svg, centre, 50.0, MIDDLE_12, &self.subtitle);
        self.draw_axes(&mut svg, &axis);
        self.draw_bars(&mut svg, &axis);
        self.draw_markers(&mut svg, &axis);
        self.draw_legend(&mut svg);
        svg.push_str("</svg>\n");
        svg
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let bars = self.series.iter().flat_map(|s| s.values.iter().flatten());
        let markers = self.markers.iter().map(|marker| &marker.value);
        bars.chain(markers)
            .copied()
            .filter(|value| value.is_finite())
    }

    fn y_axis(&self) -> YAxis {
        let max = self.values().fold(0.0, f64::max);
        match self.log_scale {
            true => {
                let positive = self.values().filter(|value| *value > 0.0);
                YAxis::log(positive.fold(f64::INFINITY, f64::min), max)
            }
            false => YAxis::linear(max),
        }
    }

    fn draw_axes(&self, svg: &mut String, axis: &YAxis) {
        for &tick in &axis.ticks {
            let y = axis.y(tick);
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>",
                WIDTH - RIGHT
            );
            text(svg, LEFT - 8.0, y + 4.0, END_12, &tick_label(tick));
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{BASE:.1}\" stroke=\"#333\"/>\n\
             <line x1=\"{LEFT}\" y1=\"{BASE:.1}\" x2=\"{:.1}\" y2=\"{BASE:.1}\" stroke=\"#333\"/>",
            WIDTH - RIGHT
        );
        let middle = TOP + PLOT_H / 2.0;
        let y_label = match axis.log {
            true => format!("{} (log scale)", self.y_label),
            false => self.y_label.clone(),
        };
        let _ = writeln!(
            svg,
            "<text x=\"22\" y=\"{middle:.1}\" font-size=\"14\" text-anchor=\"middle\" \
             transform=\"rotate(-90 22 {middle:.1})\">{}</text>",
            escape(&y_label)
        );
        let x_middle = LEFT + PLOT_W / 2.0;
        text(svg, x_middle, BASE + 44.0, MIDDLE_14, &self.x_label);
    }

    /// Width of a group, and left edge of its first bar and the width of one bar.
    fn group_geometry(&self, group: usize) -> (f64, f64) {
        let group_w = PLOT_W / self.groups.len().max(1) as f64;
        let left = LEFT + group_w * (group as f64 + GROUP_PAD);
        let bar_w = group_w * (1.0 - 2.0 * GROUP_PAD) / self.series.len().max(1) as f64;
        (left, bar_w)
    }

    fn draw_bars(&self, svg: &mut String, axis: &YAxis) {
        for (group, name) in self.groups.iter().enumerate() {
            let (left, bar_w) = self.group_geometry(group);
            let middle = left + bar_w * self.series.len() as f64 / 2.0;
            text(svg, middle, BASE + 20.0, MIDDLE_BOLD_14, name);
            for (index, series) in self.series.iter().enumerate() {
                let x = left + bar_w * index as f64;
                let centre = x + bar_w / 2.0;
                let value = series.values.get(group).copied().flatten();
                let Some(value) = value.filter(|value| value.is_finite()) else {
                    text(svg, centre, BASE - 4.0, MIDDLE_11, "n/a");
                    continue;
                };
                let y = axis.y(value);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                    x + 1.0,
                    (bar_w - 2.0).max(1.0),
                    (BASE - y).max(0.0),
                    PALETTE[index % PALETTE.len()]
                );
                let label = value_label(value, self.decimals);
                text(svg, centre, y - 4.0, MIDDLE_11, &label);
            }
        }
    }

    fn draw_markers(&self, svg: &mut String, axis: &YAxis) {
        for marker in self.markers.iter().filter(|m| m.group < self.groups.len()) {
            let (x1, bar_w) = self.group_geometry(marker.group);
            let x2 = x1 + bar_w * self.series.len() as f64;
            let y = axis.y(marker.value);
            let _ = writeln!(
                svg,
                "<line x1=\"{x1:.1}\" y1=\"{y:.1}\" x2=\"{x2:.1}\" y2=\"{y:.1}\" \
                 stroke=\"{MARKER_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>"
            );
            let label = value_label(marker.value, self.decimals);
            let style = "font-size=\"11\" text-anchor=\"end\" font-weight=\"bold\" fill=\"#c00\"";
            text(svg, x1 - 3.0, y + 4.0, style, &label);
        }
    }

    fn draw_legend(&self, svg: &mut String) {
        let mut entries: Vec<(&str, Option<&str>)> = self
            .series
            .iter()
            .enumerate()
            .map(|(index, series)| (series.name.as_str(), Some(PALETTE[index % PALETTE.len()])))
            .collect();
        let mut marker_labels: Vec<&str> = self.markers.iter().map(|m| m.label.as_str()).collect();
        marker_labels.dedup();
        entries.extend(marker_labels.into_iter().map(|label| (label, None)));
        let columns = entries.len().clamp(1, 3);
        let column_w = PLOT_W / columns as f64;
        for (index, (name, colour)) in entries.into_iter().enumerate() {
            let x = LEFT + column_w * (index % columns) as f64;
            let y = BASE + 66.0 + 20.0 * (index / columns) as f64;
            let _ = match colour {
                Some(colour) => writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"14\" fill=\"{colour}\"/>",
                    y - 11.0
                ),
                None => writeln!(
                    svg,
                    "<line x1=\"{x:.1}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" \
                     stroke=\"{MARKER_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"4 3\"/>",
                    y - 4.0,
                    x + 14.0
                ),
            };
            text(svg, x + 20.0, y, START_13, name);
        }
    }
}

const MIDDLE_BOLD_20: &str = "font-size=\"20\" text-anchor=\"middle\" font-weight=\"bold\"";
const MIDDLE_BOLD_14: &str = "font-size=\"14\" text-anchor=\"middle\" font-weight=\"bold\"";
const MIDDLE_14: &str = "font-size=\"14\" text-anchor=\"middle\"";
const MIDDLE_12: &str = "font-size=\"12\" text-anchor=\"middle\"";
const MIDDLE_11: &str = "font-size=\"11\" text-anchor=\"middle\"";
const END_12: &str = "font-size=\"12\" text-anchor=\"end\"";
const START_13: &str = "font-size=\"13\" text-anchor=\"start\"";

/// A `<text>` element; `style` is its presentation attributes.
fn text(svg: &mut String, x: f64, y: f64, style: &str, body: &str) {
    let _ = writeln!(
        svg,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" {style}>{}</text>",
        escape(body)
    );
}

/// Escapes text for SVG element content and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar's value: up to `decimals` decimals, fewer as the value grows (3 significant
/// digits are enough to read a bar).
fn value_label(value: f64, decimals: usize) -> String {
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => decimals.min(1),
        _ => decimals,
    };
    format!("{value:.decimals$}")
}

/// A tick label with as many decimals as it needs (at most 4).
fn tick_label(value: f64) -> String {
    let decimals = (0..4)
        .find(|decimals| {
            let scaled = value * 10f64.powi(*decimals);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(4) as usize;
    format!("{value:.decimals$}")
}

/// `charts` one above the other, each at its own size, as one SVG document.
pub fn stacked_svg(charts: &[BarChart]) -> String {
    let height = HEIGHT * charts.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\">\n"
    );
    for (index, chart) in charts.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<g transform=\"translate(0 {:.1})\">",
            HEIGHT * index as f64
        );
        svg.push_str(&chart.to_svg());
        svg.push_str("</g>\n");
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes `chart` as SVG to `svg_path` and converts it to a PNG at `png_path`
/// (`width` pixels wide) with `rsvg-convert`.
pub fn write_png(
    chart: &BarChart,
    svg_path: &Path,
    png_path: &Path,
    width: u32,
) -> anyhow::Result<()> {
    write_svg_and_png(&chart.to_svg(), svg_path, png_path, width)
}

/// Like [`write_png`], for `charts` one above the other ([`stacked_svg`]).
pub fn write_stacked_png(
    charts: &[BarChart],
    svg_path: &Path,
    png_path: &Path,
    width: u32,
) -> anyhow::Result<()> {
    write_svg_and_png(&stacked_svg(charts), svg_path, png_path, width)
}

fn write_svg_and_png(
    svg: &str,
    svg_path: &Path,
    png_path: &Path,
    width: u32,
) -> anyhow::Result<()> {
    for path in [svg_path, png_path] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
    }
    std::fs::write(svg_path, svg).with_context(|| format!("write {}", svg_path.display()))?;
    let output = Command::new("rsvg-convert")
        .arg("--width")
        .arg(width.to_string())
        .arg("--format")
        .arg("png")
        .arg("--output")
        .arg(png_path)
        .arg(svg_path)
        .output()
        .context("run rsvg-convert (Debian package librsvg2-bin)")?;
    if !output.status.success() {
        bail!(
            "rsvg-convert failed on {}: {}",
            svg_path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_axis_has_nice_steps_above_the_data() {
        let axis = YAxis::linear(3.6);
        assert_eq!(axis.ticks, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(YAxis::linear(1.7).ticks.last(), Some(&2.0));
        let big = YAxis::linear(1234.0);
        assert!(big.high >= 1234.0 * 1.12 && big.ticks.len() <= 9, "{big:?}");
        assert_eq!(axis.fraction(2.5), 0.5);
        assert_eq!(YAxis::linear(0.0).high, 1.0);
    }

    #[test]
    fn log_axis_spans_whole_powers_of_ten() {
        let axis = YAxis::log(1.2, 312.0);
        assert_eq!((axis.low, axis.high), (1.0, 1000.0));
        assert_eq!(axis.ticks[..4], [1.0, 2.0, 5.0, 10.0]);
        assert_eq!(axis.ticks.last(), Some(&1000.0));
        assert!((axis.fraction(10.0) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(axis.fraction(0.0), 0.0);
    }

    #[test]
    fn labels_have_the_decimals_they_need() {
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(value_label(312.1, 2), "312");
        assert_eq!(value_label(37.11, 2), "37.1");
        assert_eq!(value_label(3.844, 2), "3.84");
    }

    #[test]
    fn svg_has_a_bar_per_value_and_escapes_text() {
        let chart = BarChart {
            title: "a < b & c".into(),
            subtitle: String::new(),
            x_label: "x".into(),
            y_label: "y".into(),
            groups: vec!["g1".into(), "g2".into()],
            series: vec![
                Series {
                    name: "s1".into(),
                    values: vec![Some(1.0), Some(2.0)],
                },
                Series {
                    name: "s2".into(),
                    values: vec![Some(3.0), None],
                },
            ],
            markers: vec![Marker {
                group: 0,
                value: 2.5,
                label: "target".into(),
            }],
            decimals: 2,
            log_scale: false,
        };
        let svg = chart.to_svg();
        // Background, three bars, two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 6);
        assert!(svg.contains("a &lt; b &amp; c"));
        assert!(svg.contains(">3.00<") && svg.contains(">n/a<"));
        assert!(svg.contains(">target<") && svg.contains("stroke-dasharray"));
        let log = BarChart {
            log_scale: true,
            ..chart
        }
        .to_svg();
        assert!(log.contains("(log scale)"));
    }

    #[test]
    fn stacked_charts_sit_one_below_the_other() {
        let chart = BarChart {
            title: "t".into(),
            subtitle: String::new(),
            x_label: "x".into(),
            y_label: "y".into(),
            groups: vec!["g".into()],
            series: vec![Series {
                name: "s".into(),
                values: vec![Some(1.0)],
            }],
            markers: Vec::new(),
            decimals: 2,
            log_scale: false,
        };
        let svg = stacked_svg(&[chart.clone(), chart]);
        assert!(svg.starts_with(&format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\"",
            2.0 * HEIGHT
        )));
        assert!(svg.contains(&format!("translate(0 {:.1})", HEIGHT)));
        assert_eq!(svg.matches("<svg").count(), 3);
        assert_eq!(svg.matches("</svg>").count(), 3);
    }
}
