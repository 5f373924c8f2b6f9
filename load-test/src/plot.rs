//! `--report`: plots drawn with plotters' SVG backend: latency per second
//! (p50/p99/max), the latency percentile curve, deliveries per second, the
//! subscribers' connect latency curve, and messages published and errors
//! per second; either embedded in one self-contained HTML page with how the
//! run was made and the summary, or stacked in one SVG file under a header
//! saying how the run was made.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{PercentilePoint, Report};
use crate::series::{ActivityPoint, SecondPoint};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 340;
const FONT: &str = "sans-serif";
const P50: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const P99: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const MAX: RGBColor = RGBColor(0x99, 0x99, 0x99);
const RATE: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const CONNECT: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const CONNECT_ERR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const SEND_ERR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const CLOSE_ERR: RGBColor = RGBColor(0x8c, 0x56, 0x4b);
/// The SVG's header (how the run was made): height of a line, and
/// characters per line (a long command line wraps).
const HEADER_LINE: u32 = 22;
const HEADER_CHARS: usize = 120;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// Draws one chart of the report into an area.
type DrawFn = fn(&Area<'_>, &Report) -> Result<()>;
/// A line of the per-second latency chart: name, colour, value.
type Line = (&'static str, RGBColor, fn(&SecondPoint) -> f64);
/// A line of the errors chart: name, colour, value.
type ErrorLine = (&'static str, RGBColor, fn(&ActivityPoint) -> u64);

/// The charts, in order: caption and how to draw it.
const CHARTS: [(&str, DrawFn); 5] = [
    ("Latency per second", |a, r| latency_chart(a, &r.timeline)),
    ("Latency distribution", |a, r| {
        percentile_chart(a, &r.latency_percentiles, LATENCY_CURVE)
    }),
    ("Deliveries per second", |a, r| rate_chart(a, &r.timeline)),
    ("Connect latency", |a, r| {
        percentile_chart(a, &r.connect_latency_percentiles, CONNECT_CURVE)
    }),
    ("Published and errors per second", |a, r| {
        activity_chart(a, &r.activity)
    }),
];

/// What a percentile chart shows: title, colour, text when empty.
struct Curve {
    title: &'static str,
    color: RGBColor,
    empty: &'static str,
}

const LATENCY_CURVE: Curve = Curve {
    title: "Latency distribution (ms, log scale) by percentile",
    color: P99,
    empty: "no deliveries",
};

const CONNECT_CURVE: Curve = Curve {
    title: "Connect latency (connect + upgrade per subscriber, ms, log scale) by percentile",
    color: CONNECT,
    empty: "no connections",
};

/// Writes the report: HTML for `.html`/`.htm`, otherwise one SVG.
pub(crate) fn write(report: &Report, path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = if ext == "svg" {
        svg(report)?
    } else {
        html(report)?
    };
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// The charts stacked in one SVG document, under a header saying how the
/// run was made.
pub(crate) fn svg(report: &Report) -> Result<String> {
    let mut out = String::new();
    {
        let run = &report.run;
        let mut lines = vec![format!(
            "load-test report: {} | started {} | {} | {}",
            report.url,
            run.started_at,
            run.tool(),
            run.machine()
        )];
        lines.extend(wrap(&format!("command: {}", run.command), HEADER_CHARS));
        let header_height = 20 + HEADER_LINE * lines.len() as u32;
        let height = header_height + HEIGHT * CHARTS.len() as u32;
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (header, charts) = root.split_vertically(header_height);
        for (k, line) in lines.iter().enumerate() {
            let y = 12 + (HEADER_LINE as usize * k) as i32;
            header
                .draw(&Text::new(line.as_str(), (12, y), (FONT, 14)))
                .map_err(err)?;
        }
        let areas = charts.split_evenly((CHARTS.len(), 1));
        for (area, (_, draw)) in areas.iter().zip(CHARTS) {
            draw(area, report)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// A self-contained page: title, how the run was made, summary table, the
/// charts.
pub(crate) fn html(report: &Report) -> Result<String> {
    let mut page = String::new();
    let title = format!("load-test report: {}", report.url);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>\n\
         body {{ font-family: sans-serif; margin: 24px auto; max-width: {}px; color: #222; }}\n\
         pre {{ background: #f6f6f6; padding: 12px; overflow-x: auto; font-size: 13px; }}\n\
         figure {{ margin: 16px 0; }} figcaption {{ font-weight: bold; margin-bottom: 4px; }}\n\
         svg {{ max-width: 100%; height: auto; }}\n\
         table.run {{ border-collapse: collapse; margin-bottom: 12px; font-size: 14px; }}\n\
         table.run th {{ text-align: left; padding: 2px 12px 2px 0; vertical-align: top; }}\n\
         table.run code {{ white-space: pre-wrap; word-break: break-all; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n{}<pre>{}</pre>\n",
        escape(&title),
        WIDTH + 40,
        escape(&title),
        run_table(report),
        escape(&report.table())
    );
    for (caption, draw) in CHARTS {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            draw(&root, report)?;
            root.present().map_err(err)?;
        }
        let _ = write!(
            page,
            "<figure>\n<figcaption>{caption}</figcaption>\n{svg}\n</figure>\n"
        );
    }
    page.push_str(
        "<p>Latency is measured from the scheduled send time (rate mode) or the send time \
         (--max-rate) to the subscriber's read; per-second figures cover the fast (reading) \
         subscribers, by the second in which the message arrived.</p>\n</body>\n</html>\n",
    );
    Ok(page)
}

/// `text` in lines of at most `width` characters, broken at spaces (a
/// longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().expect("one line at least");
        if line.is_empty() {
            line.push_str(word);
        } else if line.chars().count() + 1 + word.chars().count() <= width {
            line.push(' ');
            line.push_str(word);
        } else {
            lines.push(word.to_string());
        }
    }
    lines
}

/// How the run was made, as a small table.
fn run_table(report: &Report) -> String {
    let run = &report.run;
    let rows = [
        ("Started (UTC)", escape(&run.started_at)),
        ("Command", format!("<code>{}</code>", escape(&run.command))),
        ("Tool", escape(&run.tool())),
        ("Machine", escape(&run.machine())),
    ];
    let mut t = String::from("<table class=\"run\">\n");
    for (k, v) in rows {
        let _ = writeln!(t, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    t.push_str("</table>\n");
    t
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the report: {e}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "no data" panel saying `what` is missing.
fn empty(area: &Area<'_>, title: &str, what: &str) -> Result<()> {
    area.titled(title, (FONT, 20))
        .map_err(err)?
        .draw(&Text::new(
            what,
            (WIDTH as i32 / 2 - 50, HEIGHT as i32 / 2 - 20),
            (FONT, 16),
        ))
        .map_err(err)?;
    Ok(())
}

/// A log-scale latency range covering `values` (ms), with some room.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (0.001, 1.0);
    }
    (lo / 1.5, (hi * 1.5).max(lo * 10.0))
}

/// A log-scale latency axis labelled at 1-2-5 steps (plotters' own log
/// labels can leave a decade unlabelled).
fn log_axis(
    lo: f64,
    hi: f64,
) -> plotters::coord::combinators::WithKeyPoints<plotters::coord::combinators::LogCoord<f64>> {
    (lo..hi).log_scale().with_key_points(key_points(lo, hi))
}

/// 1, 2, 5 times powers of ten within `lo..=hi`.
fn key_points(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if (lo..=hi).contains(&v) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

fn latency_chart(area: &Area<'_>, points: &[SecondPoint]) -> Result<()> {
    let title = "Latency per second (ms, log scale)";
    let pts: Vec<&SecondPoint> = points.iter().filter(|p| p.delivered > 0).collect();
    if pts.is_empty() {
        return empty(area, title, "no deliveries");
    }
    let (lo, hi) = log_range(pts.iter().flat_map(|p| [p.p50_ms, p.max_ms]));
    let x_end = points.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_end, log_axis(lo, hi))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since publishing started")
        .y_desc("latency (ms)")
        .y_label_formatter(&|v| fmt_ms(*v))
        .draw()
        .map_err(err)?;
    let series: [Line; 3] = [
        ("max", MAX, |p| p.max_ms),
        ("p99", P99, |p| p.p99_ms),
        ("p50", P50, |p| p.p50_ms),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (f64::from(p.t_s) + 0.5, f(p))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((f64::from(p.t_s) + 0.5, f(p)), 3, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn percentile_chart(area: &Area<'_>, curve: &[PercentilePoint], what: Curve) -> Result<()> {
    let title = what.title;
    if curve.is_empty() {
        return empty(area, title, what.empty);
    }
    // x: "nines", -log10(1 - q): 0 = 0 %, 1 = 90 %, 2 = 99 %, ...; the max is drawn at the end.
    let nines = |pct: f64| -((1.0 - pct / 100.0).max(1e-9)).log10();
    let last_nines = curve
        .iter()
        .filter(|p| p.percentile < 100.0)
        .map(|p| nines(p.percentile))
        .fold(1.0f64, f64::max);
    let x_end = (last_nines - 1e-6).ceil().max(1.0);
    let pts: Vec<(f64, f64)> = curve
        .iter()
        .map(|p| {
            let x = if p.percentile >= 100.0 {
                last_nines
            } else {
                nines(p.percentile)
            };
            (x, p.ms)
        })
        .filter(|&(_, ms)| ms > 0.0)
        .collect();
    if pts.is_empty() {
        return empty(area, title, what.empty);
    }
    let (lo, hi) = log_range(pts.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .margin_right(40)
        .build_cartesian_2d(0f64..x_end, log_axis(lo, hi))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(x_end as usize + 1)
        .x_label_formatter(&|x| {
            let pct = 100.0 * (1.0 - 10f64.powf(-x));
            let digits = (x.round() as usize).saturating_sub(2);
            format!("{pct:.digits$}%")
        })
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .y_label_formatter(&|v| fmt_ms(*v))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().copied(),
            what.color.stroke_width(2),
        ))
        .map_err(err)?;
    Ok(())
}

fn rate_chart(area: &Area<'_>, points: &[SecondPoint]) -> Result<()> {
    let title = "Deliveries per second (all reading subscribers)";
    if points.iter().all(|p| p.delivered == 0) {
        return empty(area, title, "no deliveries");
    }
    let top = points.iter().map(|p| p.delivered).max().unwrap_or(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..points.len() as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since publishing started")
        .y_desc("deliveries / s")
        .y_label_formatter(&|v| fmt_count(*v))
        .draw()
        .map_err(err)?;
    // One bar per second.
    chart
        .draw_series(points.iter().map(|p| {
            let x = f64::from(p.t_s);
            Rectangle::new(
                [(x + 0.1, 0.0), (x + 0.9, p.delivered as f64)],
                RATE.mix(0.8).filled(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// Messages published per second (bars, left axis) and errors per second
/// by kind (lines, right axis), from the connect phase (negative seconds)
/// to the end.
fn activity_chart(area: &Area<'_>, points: &[ActivityPoint]) -> Result<()> {
    let title = "Messages published and errors per second";
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return empty(area, title, "nothing published, no errors");
    };
    let x = (first.t_s as f64)..(last.t_s as f64 + 1.0);
    let top = points.iter().map(|p| p.published).max().unwrap_or(0).max(1) as f64 * 1.15;
    let lines: [ErrorLine; 3] = [
        ("connect errors", CONNECT_ERR, |p| p.connect_errors),
        ("send errors", SEND_ERR, |p| p.send_errors),
        ("server closes", CLOSE_ERR, |p| p.server_closes),
    ];
    // Errors are few: an integer axis with room above the largest.
    let err_top = points
        .iter()
        .flat_map(|p| lines.iter().map(move |l| (l.2)(p)))
        .max()
        .unwrap_or(0)
        + 1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(x.clone(), 0f64..top)
        .map_err(err)?
        .set_secondary_coord(x, 0u64..err_top);
    chart
        .configure_mesh()
        .x_desc("seconds since publishing started (negative: connecting)")
        .y_desc("messages published / s")
        .y_label_formatter(&|v| fmt_count(*v))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("errors / s")
        .label_style((FONT, 12))
        .y_labels((err_top as usize + 1).min(10))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(points.iter().map(|p| {
            let x = p.t_s as f64;
            Rectangle::new(
                [(x + 0.1, 0.0), (x + 0.9, p.published as f64)],
                RATE.mix(0.8).filled(),
            )
        }))
        .map_err(err)?
        .label("published")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], RATE.mix(0.8).filled()));
    for (name, color, f) in lines {
        let at = |p: &ActivityPoint| (p.t_s as f64 + 0.5, f(p));
        chart
            .draw_secondary_series(LineSeries::new(
                points.iter().map(at),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_secondary_series(
                points
                    .iter()
                    .filter(|p| f(p) > 0)
                    .map(|p| Circle::new(at(p), 3, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runinfo::RunInfo;

    fn sample_report() -> Report {
        let mut r = Report {
            url: "ws://127.0.0.1:1/ws?a<b&c".into(),
            ..Report::default()
        };
        r.timeline = (0..5)
            .map(|t| SecondPoint {
                t_s: t,
                delivered: if t == 3 { 0 } else { 1000 + u64::from(t) * 10 },
                p50_ms: 0.4,
                p99_ms: 1.5 + f64::from(t),
                max_ms: 9.0,
            })
            .collect();
        let curve = |scale: f64| {
            [(0.0, 0.1), (90.0, 0.8), (99.0, 2.0), (100.0, 9.0)]
                .map(|(percentile, ms)| PercentilePoint {
                    percentile,
                    ms: ms * scale,
                })
                .to_vec()
        };
        r.latency_percentiles = curve(1.0);
        r.connect_latency_percentiles = curve(3.0);
        r.activity = (-2..5)
            .map(|t_s| ActivityPoint {
                t_s,
                published: if t_s >= 0 { 200 } else { 0 },
                connect_errors: u64::from(t_s == -2) * 4,
                send_errors: u64::from(t_s == 4),
                server_closes: u64::from(t_s == 2) * 2,
            })
            .collect();
        r.run = RunInfo {
            started_at: "2026-12-01T14:51:18Z".into(),
            command: "load-test --url 'ws://h/ws?a=1&b=<2>'".into(),
            version: "0.1.0".into(),
            git_revision: "e8f075d1a2b3-dirty".into(),
            cores: 2,
            kernel: "6.1.0-test".into(),
        };
        r.finish();
        r
    }

    /// The text of every `<text>` element, joined (plotters escapes and
    /// sometimes splits text).
    fn texts(svg: &str) -> String {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn html_page_is_self_contained_with_five_charts_and_the_run() {
        let page = html(&sample_report()).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 5, "{page}");
        for caption in [
            "Latency per second",
            "Connect latency (connect + upgrade per subscriber",
            "Messages published and errors per second",
            "connect errors",
            "send errors",
            "server closes",
        ] {
            assert!(page.contains(caption), "{caption}");
        }
        assert!(page.contains("load-test summary"));
        // The URL is escaped, in the title and in the table.
        assert!(page.contains("a&lt;b&amp;c"));
        assert!(!page.contains("a<b"));
        assert!(!page.contains("<script") && !page.contains("src=\"http"));
        // How the run was made: a table before the summary, escaped.
        let table = page.find("<table class=\"run\">").expect("run table");
        assert!(table < page.find("<pre>").unwrap());
        assert!(page.contains("<tr><th>Started (UTC)</th><td>2026-12-01T14:51:18Z</td></tr>"));
        assert!(page.contains("<code>load-test --url 'ws://h/ws?a=1&amp;b=&lt;2&gt;'</code>"));
        assert!(page.contains("<td>load-test 0.1.0 (e8f075d1a2b3-dirty)</td>"));
        assert!(page.contains("<td>2 cores, kernel 6.1.0-test</td>"));
    }

    #[test]
    fn svg_has_the_run_and_all_charts_and_empty_runs_still_render() {
        let s = svg(&sample_report()).unwrap();
        assert!(s.starts_with("<svg"));
        let t = texts(&s);
        for want in [
            "Deliveries per second",
            "Latency distribution",
            "Connect latency",
            "Messages published and errors per second",
            "errors / s",
            "seconds since publishing started (negative: connecting)",
            "started 2026-12-01T14:51:18Z",
            "load-test 0.1.0 (e8f075d1a2b3-dirty)",
            "2 cores, kernel 6.1.0-test",
            "command: load-test --url &apos;ws://h/ws?a=1&amp;b=&lt;2&gt;&apos;",
        ] {
            assert!(t.contains(want), "{want} not in\n{t}");
        }
        // The activity chart's x axis starts in the connect phase.
        assert!(t.contains("-2"), "{t}");
        let mut r = Report::default();
        r.finish();
        let t = texts(&svg(&r).unwrap());
        assert_eq!(t.matches("no deliveries").count(), 3, "{t}");
        assert_eq!(t.matches("no connections").count(), 1, "{t}");
        assert_eq!(t.matches("nothing published, no errors").count(), 1, "{t}");
    }

    #[test]
    fn write_picks_format_by_extension() {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let h = dir.join(format!("lt-plot-{id}.html"));
        let s = dir.join(format!("lt-plot-{id}.svg"));
        write(&sample_report(), &h).unwrap();
        write(&sample_report(), &s).unwrap();
        assert!(std::fs::read_to_string(&h)
            .unwrap()
            .starts_with("<!DOCTYPE"));
        assert!(std::fs::read_to_string(&s).unwrap().starts_with("<svg"));
        let _ = std::fs::remove_file(h);
        let _ = std::fs::remove_file(s);
    }

    #[test]
    fn long_command_lines_wrap_at_spaces() {
        assert_eq!(wrap("a bb ccc", 20), ["a bb ccc"]);
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
        assert_eq!(
            wrap("x averyverylongword y", 4),
            ["x", "averyverylongword", "y"]
        );
        assert_eq!(wrap("", 4), [""]);
    }

    #[test]
    fn key_points_step_1_2_5() {
        let k = key_points(0.03, 7.0);
        let want = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
        assert_eq!(k.len(), want.len(), "{k:?}");
        for (a, b) in k.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{k:?}");
        }
    }

    #[test]
    fn log_range_has_room() {
        assert_eq!(log_range([0.0].into_iter()), (0.001, 1.0));
        let (lo, hi) = log_range([0.5, 2.0, 0.0].into_iter());
        assert!(lo < 0.5 && hi > 2.0 && hi >= lo * 10.0);
    }
}
