//! SVG figures with plotters (SVG backend only: no font or system libraries).

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::stats::Report;
use crate::SimError;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points `(x, y)`, in x order.
    pub points: Vec<(f64, f64)>,
}

/// How an axis is scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// Linear over `[lo, hi]`.
    Linear(f64, f64),
    /// Logarithmic over `[lo, hi]` (both positive).
    Log(f64, f64),
}

/// A line chart to draw.
#[derive(Clone, Debug)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// X axis label.
    pub x_label: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// X scale.
    pub x: Scale,
    /// Y scale.
    pub y: Scale,
    /// The lines.
    pub series: Vec<Series>,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Plot {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Draws `chart` into the SVG file `path`.
pub fn draw(path: &Path, chart: &Chart<'_>) -> Result<(), SimError> {
    match (chart.x, chart.y) {
        (Scale::Linear(a, b), Scale::Linear(c, d)) => draw_in(path, chart, a..b, c..d),
        (Scale::Log(a, b), Scale::Linear(c, d)) => draw_in(path, chart, (a..b).log_scale(), c..d),
        (Scale::Linear(a, b), Scale::Log(c, d)) => draw_in(path, chart, a..b, (c..d).log_scale()),
        (Scale::Log(a, b), Scale::Log(c, d)) => {
            draw_in(path, chart, (a..b).log_scale(), (c..d).log_scale())
        }
    }
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

fn draw_in<X, Y>(path: &Path, chart: &Chart<'_>, x: X, y: Y) -> Result<(), SimError>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut ctx = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(|e| plot_err(path, e))?;
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        ctx.draw_series(LineSeries::new(
            s.points.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?
        .label(s.label.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Span of the values with a margin, for a linear axis.
pub fn linear_span(values: impl Iterator<Item = f64>, floor_zero: bool) -> Scale {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return Scale::Linear(0.0, 1.0);
    }
    if floor_zero {
        lo = lo.min(0.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    Scale::Linear(
        lo - if floor_zero && lo == 0.0 { 0.0 } else { pad },
        hi + pad,
    )
}

/// Span of positive values for a log axis.
pub fn log_span(values: impl Iterator<Item = f64>) -> Scale {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return Scale::Log(1.0, 10.0);
    }
    Scale::Log(lo / 1.3, hi * 1.3)
}

/// The two figures of a sweep: delivery ratio and latency against meters.
/// Returns the files written (`DIR/PREFIX-delivery.svg`, `DIR/PREFIX-latency.svg`).
pub fn sweep_figures(
    dir: &Path,
    prefix: &str,
    reports: &[Report],
) -> Result<Vec<PathBuf>, SimError> {
    std::fs::create_dir_all(dir).map_err(|e| plot_err(dir, e))?;
    let xs = || reports.iter().map(|r| f64::from(r.meters));
    let delivery = vec![
        Series {
            label: "delivered".into(),
            points: reports
                .iter()
                .map(|r| (f64::from(r.meters), r.delivery_ratio))
                .collect(),
        },
        Series {
            label: "delivered within retry budget".into(),
            points: reports
                .iter()
                .map(|r| (f64::from(r.meters), r.delivery_ratio_in_budget))
                .collect(),
        },
    ];
    let latency = vec![
        Series {
            label: "p50".into(),
            points: reports
                .iter()
                .map(|r| (f64::from(r.meters), r.latency_p50_ms))
                .collect(),
        },
        Series {
            label: "p99".into(),
            points: reports
                .iter()
                .map(|r| (f64::from(r.meters), r.latency_p99_ms))
                .collect(),
        },
    ];
    let x = if reports.len() > 1 {
        log_span(xs())
    } else {
        linear_span(xs(), true)
    };
    let d_path = dir.join(format!("{prefix}-delivery.svg"));
    draw(
        &d_path,
        &Chart {
            title: "Delivery ratio against meters per relay",
            x_label: "meters",
            y_label: "fraction of readings",
            x,
            y: linear_span(
                delivery.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
                false,
            ),
            series: delivery,
        },
    )?;
    let l_path = dir.join(format!("{prefix}-latency.svg"));
    draw(
        &l_path,
        &Chart {
            title: "Latency (reading made to accepted) against meters per relay",
            x_label: "meters",
            y_label: "latency, ms",
            x,
            y: log_span(latency.iter().flat_map(|s| s.points.iter().map(|p| p.1))),
            series: latency,
        },
    )?;
    Ok(vec![d_path, l_path])
}
