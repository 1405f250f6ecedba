//! The study's figures: PSNR against NFE per task (SVG, plotters) and, per task, an image grid
//! clean | y | each run's restoration at its first configuration (PNG, drawn like `conjure eval --plot`).
//! The SVG chart needs plotters, which comes with the `cli` feature; without it the chart is skipped
//! with a warning (the study's numbers and grids are written either way).

use std::collections::BTreeMap;
use std::path::Path;

use image::RgbImage;
#[cfg(feature = "cli")]
use plotters::prelude::*;

use super::{measure, ConfigResult, Sample, StudyReport};
use crate::error::{Error, Result};
use crate::imageio;
use crate::metrics::plot::{
    draw_image, draw_text, text_width, BACKGROUND, CELL_TARGET, DIM_INK, GAP, INK, MARGIN,
};
use crate::spec::study::{StudySpec, StudyTask};
use crate::tensor::Img;

#[cfg(feature = "cli")]
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

#[cfg(feature = "cli")]
fn plot_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |m| Error::Image {
        path: path.to_path_buf(),
        message: format!("cannot draw the plot: {m}"),
    }
}

/// Without plotters (`cli` feature off): no chart, a warning instead.
#[cfg(not(feature = "cli"))]
pub fn psnr_vs_nfe(_results: &[ConfigResult], _tasks: &[&StudyTask], path: &Path) -> Result<()> {
    tracing::warn!(
        "{} not drawn: conjure was built without its `cli` feature (plotters)",
        path.display()
    );
    Ok(())
}

/// One panel per task: mean PSNR against NFE (log axis), one line per (run, Jacobian mode): a colour per
/// run, solid for the exact Jacobian, dashed for finite differences, dotted for the identity; diverged
/// configurations are left out of their line. The legend takes a panel of its own.
#[cfg(feature = "cli")]
pub fn psnr_vs_nfe(results: &[ConfigResult], tasks: &[&StudyTask], path: &Path) -> Result<()> {
    let err = plot_err(path);
    let mut runs: Vec<&str> = Vec::new();
    let mut lines: Vec<(&str, &str)> = Vec::new();
    for r in results {
        if !runs.contains(&r.run.as_str()) {
            runs.push(&r.run);
        }
        if !lines.contains(&(r.run.as_str(), r.jacobian.as_str())) {
            lines.push((&r.run, &r.jacobian));
        }
    }
    let color_of =
        |run: &str| COLORS[runs.iter().position(|r| *r == run).unwrap_or(0) % COLORS.len()];
    let ok: Vec<&ConfigResult> = results.iter().filter(|r| r.error.is_none()).collect();
    let nfe_max = ok.iter().map(|r| r.nfe).max().unwrap_or(100).max(10) as f64;
    let panels = tasks.len() + 1;
    let cols = panels.clamp(1, 3);
    let rows = panels.div_ceil(cols).max(1);
    let (w, h) = (420 * cols as u32, 340 * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((rows, cols));
        for (area, task) in areas.iter().zip(tasks) {
            let mine: Vec<&&ConfigResult> = ok.iter().filter(|r| r.task == task.name).collect();
            let ps: Vec<f64> = mine.iter().map(|r| r.mean_psnr()).collect();
            if ps.is_empty() {
                continue;
            }
            let lo = ps.iter().cloned().fold(f64::INFINITY, f64::min).floor() - 0.5;
            let hi = ps.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ceil() + 0.5;
            let mut chart = ChartBuilder::on(area)
                .caption(&task.name, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(44)
                .build_cartesian_2d((0.8f64..nfe_max * 1.25).log_scale(), lo..hi)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("NFE")
                .y_desc("PSNR (dB)")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (run, jac) in &lines {
                let mut pts: Vec<(f64, f64)> = mine
                    .iter()
                    .filter(|r| r.run == *run && r.jacobian == *jac)
                    .map(|r| (r.nfe as f64, r.mean_psnr()))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let color = color_of(run);
                let r = match *jac {
                    "exact" => {
                        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    }
                    "finite-difference" => chart.draw_series(DashedLineSeries::new(
                        pts.clone(),
                        7,
                        4,
                        color.stroke_width(2),
                    )),
                    _ => chart.draw_series(DashedLineSeries::new(
                        pts.clone(),
                        2,
                        3,
                        color.stroke_width(2),
                    )),
                };
                r.map_err(|e| err(e.to_string()))?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        // The legend, in the panel after the last task.
        if let Some(area) = areas.get(tasks.len()) {
            let (_, ah) = area.dim_in_pixel();
            let step = ((ah as i32 - 20) / lines.len().max(1) as i32).clamp(8, 22);
            for (k, (run, jac)) in lines.iter().enumerate() {
                let y = 14 + k as i32 * step;
                let color = color_of(run);
                let pts = vec![(20, y), (60, y)];
                let style = color.stroke_width(2);
                let drawn = match *jac {
                    "exact" => area.draw(&PathElement::new(pts, style)),
                    "finite-difference" => area
                        .draw(&PathElement::new(vec![(20, y), (34, y)], style))
                        .and_then(|_| area.draw(&PathElement::new(vec![(42, y), (56, y)], style))),
                    _ => (0..6).try_for_each(|d| {
                        area.draw(&PathElement::new(
                            vec![(20 + 7 * d, y), (23 + 7 * d, y)],
                            style,
                        ))
                    }),
                };
                drawn.map_err(|e| err(e.to_string()))?;
                let text = if *jac == "exact" {
                    run.to_string()
                } else {
                    format!("{run} ({jac} Jacobian)")
                };
                area.draw(&Text::new(text, (70, y - 7), ("sans-serif", 13)))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    imageio::write_atomic(path, svg.as_bytes())
}

/// The image grid of one task: rows = the first `rows` test images; columns = clean, y, and each run's
/// restoration at its first configuration (kept by the sweep). Returns false when nothing was kept.
pub fn grid(
    study: &StudySpec,
    report: &StudyReport,
    task: &StudyTask,
    test: &[Sample],
    kept: &BTreeMap<(String, String, String), Img>,
    rows: usize,
    path: &Path,
) -> Result<bool> {
    // Columns: the runs with kept images for this task, in sweep order, labelled with their NFE.
    let mut columns: Vec<(String, String)> = Vec::new();
    for r in report.test.iter().filter(|r| r.task == task.name) {
        if !columns.iter().any(|(run, _)| run == &r.run)
            && kept.contains_key(&(task.name.clone(), r.run.clone(), test[0].name.clone()))
        {
            columns.push((r.run.clone(), format!("{} {}", r.run, r.nfe).to_uppercase()));
        }
    }
    let Some(run0) = study.runs.iter().find(|r| r.covers(&task.name)) else {
        return Ok(false);
    };
    if columns.is_empty() {
        return Ok(false);
    }
    let spec = study.pipeline(task, run0, &[], run0.nfe[0], run0.jacobian[0])?;
    let rows = rows.clamp(1, test.len());
    let (_, h, w) = test[0].x.dim();
    let factor = CELL_TARGET.div_ceil(h.max(w)).max(1);
    let (cw, ch) = (w * factor, h * factor);
    let ncol = columns.len() + 2;
    let line = 11;
    let title = format!(
        "{}: CLEAN, Y, RESTORED AT THE FIRST NFE",
        task.name.to_uppercase()
    );
    let width = (ncol * (cw + GAP) - GAP).max(text_width(&title, 2)) + 2 * MARGIN;
    let top = MARGIN + 14 + 8 + line;
    let row_h = ch + line + GAP;
    let height = top + rows * row_h + MARGIN;
    let mut canvas = RgbImage::from_pixel(width as u32, height as u32, BACKGROUND);
    draw_text(&mut canvas, MARGIN, MARGIN, &title, 2, INK);
    let headers: Vec<String> = ["CLEAN".to_string(), "Y".to_string()]
        .into_iter()
        .chain(columns.iter().map(|(_, h)| h.clone()))
        .collect();
    for (k, name) in headers.iter().enumerate() {
        let x = MARGIN + k * (cw + GAP) + cw.saturating_sub(text_width(name, 1)) / 2;
        draw_text(&mut canvas, x, top - line, name, 1, DIM_INK);
    }
    let range = [-1.0, 1.0];
    let range = crate::model::card::ModelCard::load(&spec.model)
        .map(|c| c.image.value_range)
        .unwrap_or(range);
    for (n, s) in test.iter().take(rows).enumerate() {
        let y0 = top + n * row_h;
        let m = measure(&spec, "test", s, study.quantize.map(|b| (b, range)))?;
        let images = [
            imageio::from_model(&s.x, range),
            imageio::from_model(&m.y, range),
        ];
        for (k, img) in images.iter().enumerate() {
            draw_image(&mut canvas, MARGIN + k * (cw + GAP), y0, cw, ch, img);
        }
        let mut psnrs = Vec::new();
        for (k, (run, _)) in columns.iter().enumerate() {
            if let Some(img) = kept.get(&(task.name.clone(), run.clone(), s.name.clone())) {
                draw_image(&mut canvas, MARGIN + (k + 2) * (cw + GAP), y0, cw, ch, img);
                let p = crate::metrics::psnr(&images[0], img, 1.0)?;
                psnrs.push(format!("{p:.1}"));
            }
        }
        let label = format!("{}  PSNR {}", s.name.to_uppercase(), psnrs.join(" "));
        draw_text(&mut canvas, MARGIN, y0 + ch + 2, &label, 1, DIM_INK);
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(canvas)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    imageio::write_atomic(path, &bytes.into_inner())?;
    Ok(true)
}
