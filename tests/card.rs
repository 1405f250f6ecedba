//! Model cards: valid cards load; every invalid card is an error that names the file at fault (the card
//! for card errors, the graph for graph-I/O errors).

use std::path::{Path, PathBuf};

use conjure::model::card::{CardKind, CardParam, CardSchedule, ModelCard};
use conjure::model::{
    load, ort_available, EngineChoice, JacobianMode, ModelKind, Network, Parameterization,
    Provider, RuntimeOptions,
};
use conjure::schedules::TimeInput;
use tempfile::TempDir;

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

const DDPM_CARD: &str = "name: fmnist-ddpm
kind: diffusion
parameterization: eps
schedule:
  type: ddpm-linear
  beta_start: 0.0001
  beta_end: 0.02
  timesteps: 1000
time_input: index
image: {channels: 1, height: 32, width: 32, value_range: [-1, 1]}
graphs:
  forward: denoiser.onnx
  vjp: denoiser_vjp.onnx
";

/// A model directory with the shipped ddpm graphs (weights included) and the given card.
fn model_dir(card: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = shipped("fmnist-ddpm");
    for f in [
        "denoiser.onnx",
        "denoiser_vjp.onnx",
        "denoiser_residuals.onnx",
        "denoiser_backward.onnx",
        "weights.bin",
    ] {
        // A real file, not a symlink: engines refuse external weights that resolve outside the model
        // directory.
        let dst = dir.path().join(f);
        if std::fs::hard_link(src.join(f), &dst).is_err() {
            std::fs::copy(src.join(f), &dst).unwrap();
        }
    }
    std::fs::write(dir.path().join("model.yaml"), card).unwrap();
    dir
}

fn card_err(card: &str) -> String {
    let dir = model_dir(card);
    let e = ModelCard::load(dir.path())
        .expect_err("invalid card accepted")
        .to_string();
    eprintln!("{e}");
    let yaml = dir.path().join("model.yaml");
    assert!(
        e.contains(&yaml.display().to_string()),
        "error does not name {}: {e}",
        yaml.display()
    );
    e
}

fn engines() -> Vec<EngineChoice> {
    let mut v = vec![EngineChoice::Tract];
    match ort_available() {
        Ok(()) => v.push(EngineChoice::OnnxRuntime),
        Err(why) => {
            assert!(
                std::env::var("CONJURE_REQUIRE_ORT").map_or(true, |v| v != "1"),
                "CONJURE_REQUIRE_ORT=1 but onnx runtime is not available: {why}"
            );
            eprintln!("NOTICE: onnx runtime checks skipped ({why})");
        }
    }
    v
}

fn opts(engine: EngineChoice) -> RuntimeOptions {
    RuntimeOptions {
        engine,
        providers: vec![Provider::Cpu],
        threads: 1,
        ..RuntimeOptions::default()
    }
}

/// `load` fails on every engine, naming `file`; returns the messages.
fn load_err(card: &str, file: &str) -> Vec<String> {
    let dir = model_dir(card);
    engines()
        .into_iter()
        .map(|eng| {
            let e = match load(dir.path(), &opts(eng)) {
                Ok(_) => panic!("{eng:?}: a graph contradicting the card was accepted"),
                Err(e) => e.to_string(),
            };
            let path = dir.path().join(file).display().to_string();
            eprintln!("{eng:?}: {e}");
            assert!(
                e.contains(&path),
                "{eng:?}: error does not name {path}: {e}"
            );
            e
        })
        .collect()
}

#[test]
fn shipped_cards_load() {
    let ddpm = ModelCard::load(&shipped("fmnist-ddpm")).unwrap();
    assert_eq!(ddpm.name, "fmnist-ddpm");
    assert_eq!(ddpm.kind, CardKind::Diffusion);
    assert_eq!(ddpm.parameterization, CardParam::Eps);
    assert_eq!(
        ddpm.schedule,
        CardSchedule::DdpmLinear {
            beta_start: 1e-4,
            beta_end: 0.02,
            timesteps: 1000
        }
    );
    assert_eq!(ddpm.time_input(), TimeInput::Index { timesteps: 1000 });
    assert_eq!(ddpm.image.value_range, [-1.0, 1.0]);
    assert_eq!(
        ddpm.graphs.vjp.as_deref(),
        Some(Path::new("denoiser_vjp.onnx"))
    );
    assert_eq!(
        ddpm.graphs.split(),
        Some((
            &PathBuf::from("denoiser_residuals.onnx"),
            &PathBuf::from("denoiser_backward.onnx")
        ))
    );
    let flow = ModelCard::load(&shipped("fmnist-flow")).unwrap();
    assert!(flow.graphs.vjp.is_some());
    assert_eq!(flow.model_kind(), ModelKind::Flow);
    assert_eq!(flow.param(), Parameterization::Velocity);
    assert_eq!(flow.schedule, CardSchedule::RectifiedFlow);
    assert_eq!(flow.time_input(), TimeInput::Unit);
}

#[test]
fn other_valid_cards_load() {
    // x0 parameterization, vp-continuous schedule, unit time, no vjp graph.
    let card = "name: x0-model
kind: diffusion
parameterization: x0
schedule: {type: vp-continuous, beta_min: 0.1, beta_max: 20.0}
time_input: unit
image: {channels: 1, height: 32, width: 32, value_range: [0, 1]}
graphs: {forward: denoiser.onnx}
";
    let dir = model_dir(card);
    let c = ModelCard::load(dir.path()).unwrap();
    assert_eq!(c.param(), Parameterization::X0);
    assert!(c.graphs.vjp.is_none());
    // alphas-cumprod from a text file beside the card.
    let card = DDPM_CARD.replace(
        "  type: ddpm-linear\n  beta_start: 0.0001\n  beta_end: 0.02\n  timesteps: 1000\n",
        "  type: alphas-cumprod\n  file: alphas.txt\n",
    );
    let dir = model_dir(&card);
    std::fs::write(dir.path().join("alphas.txt"), "0.999\n0.99\n0.9\n0.5\n").unwrap();
    let c = ModelCard::load(dir.path()).unwrap();
    assert!(matches!(c.schedule, CardSchedule::AlphasCumprod { .. }));
    let from_text = c.model_schedule(dir.path()).unwrap();
    // The same values as a float64 .npy file give the same schedule.
    let card = card.replace("file: alphas.txt", "file: alphas.npy");
    let dir = model_dir(&card);
    ndarray_npy::write_npy(
        dir.path().join("alphas.npy"),
        &ndarray::arr1(&[0.999f64, 0.99, 0.9, 0.5]),
    )
    .unwrap();
    let c = ModelCard::load(dir.path()).unwrap();
    let from_npy = c.model_schedule(dir.path()).unwrap();
    assert_eq!(format!("{from_text:?}"), format!("{from_npy:?}"));
    assert!(format!("{from_npy:?}").contains("0.9"));
}

#[test]
fn unknown_keys_are_errors() {
    let e = card_err(&format!("{DDPM_CARD}licence: mit\n"));
    assert!(e.contains("licence"), "{e}");
    let e = card_err(&DDPM_CARD.replace("channels: 1,", "channels: 1, depth: 8,"));
    assert!(e.contains("depth"), "{e}");
    let e = card_err(&DDPM_CARD.replace("timesteps: 1000", "timesteps: 1000\n  eta: 0.0"));
    assert!(e.contains("eta"), "{e}");
    let e = card_err(&DDPM_CARD.replace("kind: diffusion", "kind: gan"));
    assert!(e.contains("gan"), "{e}");
}

#[test]
fn bad_combinations_are_errors() {
    let e = card_err(&DDPM_CARD.replace("parameterization: eps", "parameterization: velocity"));
    assert!(e.contains("velocity"), "{e}");
    let flow_eps = DDPM_CARD.replace("kind: diffusion", "kind: flow");
    let e = card_err(&flow_eps);
    assert!(e.contains("flow"), "{e}");
    let flow_ddpm = flow_eps.replace("parameterization: eps", "parameterization: velocity");
    let e = card_err(&flow_ddpm);
    assert!(e.contains("rectified-flow"), "{e}");
    let diffusion_rf = DDPM_CARD.replace(
        "  type: ddpm-linear\n  beta_start: 0.0001\n  beta_end: 0.02\n  timesteps: 1000\n",
        "  type: rectified-flow\n",
    );
    let e = card_err(&diffusion_rf);
    assert!(e.contains("diffusion model needs"), "{e}");
}

#[test]
fn bad_values_are_errors() {
    let e = card_err(&DDPM_CARD.replace("value_range: [-1, 1]", "value_range: [1, -1]"));
    assert!(e.contains("value_range"), "{e}");
    let e = card_err(&DDPM_CARD.replace("channels: 1", "channels: 0"));
    assert!(e.contains("image size"), "{e}");
    let e = card_err(&DDPM_CARD.replace("beta_end: 0.02", "beta_end: 1.5"));
    assert!(e.contains("betas"), "{e}");
    let e = card_err(&DDPM_CARD.replace("timesteps: 1000", "timesteps: 1"));
    assert!(e.contains("timesteps 1"), "{e}");
    let e = card_err(&DDPM_CARD.replace(
        "  type: ddpm-linear\n  beta_start: 0.0001\n  beta_end: 0.02\n  timesteps: 1000\n",
        "  type: alphas-cumprod\n  file: missing.npy\n",
    ));
    assert!(e.contains("missing.npy"), "{e}");
}

#[test]
fn missing_graph_files_are_errors() {
    let e = card_err(&DDPM_CARD.replace("forward: denoiser.onnx", "forward: nope.onnx"));
    assert!(e.contains("nope.onnx") && e.contains("not found"), "{e}");
    let e = card_err(&DDPM_CARD.replace("vjp: denoiser_vjp.onnx", "vjp: gone.onnx"));
    assert!(e.contains("gone.onnx"), "{e}");
    let e = card_err(&DDPM_CARD.replace("  forward: denoiser.onnx\n", ""));
    assert!(e.contains("forward"), "{e}");
}

#[test]
fn graph_io_contradicting_the_card_is_an_error() {
    // The card's image says 3 channels, the graph takes 1.
    for e in load_err(
        &DDPM_CARD.replace("channels: 1", "channels: 3"),
        "denoiser.onnx",
    ) {
        assert!(e.contains("3x32x32") && e.contains("expected 3"), "{e}");
    }
    // 64x64 images for a 32x32 graph.
    let card = DDPM_CARD.replace("height: 32, width: 32", "height: 64, width: 64");
    for e in load_err(&card, "denoiser.onnx") {
        assert!(e.contains("expected 64"), "{e}");
    }
    // The VJP graph given as the forward graph: one input too many.
    let card = DDPM_CARD.replace("forward: denoiser.onnx", "forward: denoiser_vjp.onnx");
    for e in load_err(&card, "denoiser_vjp.onnx") {
        assert!(
            e.contains("forward graph has inputs") && e.contains("cotangent"),
            "{e}"
        );
    }
    // The forward graph given as the VJP graph: no cotangent input.
    let card = DDPM_CARD.replace("vjp: denoiser_vjp.onnx", "vjp: denoiser.onnx");
    for e in load_err(&card, "denoiser.onnx") {
        assert!(e.contains("vjp graph has inputs"), "{e}");
    }
}

#[test]
fn exact_jacobian_without_a_vjp_graph_is_an_error() {
    let card = DDPM_CARD.replace("  vjp: denoiser_vjp.onnx\n", "");
    let dir = model_dir(&card);
    let c = ModelCard::load(dir.path()).unwrap();
    let e = c
        .check_jacobian(dir.path(), JacobianMode::Exact)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.yaml") && e.contains("jacobian: exact"),
        "{e}"
    );
    c.check_jacobian(dir.path(), JacobianMode::FiniteDifference)
        .unwrap();
    c.check_jacobian(dir.path(), JacobianMode::Identity)
        .unwrap();
    // The loaded model has no VJP; the Network refuses exact mode and runs finite differences.
    let m = load(dir.path(), &opts(EngineChoice::Tract)).unwrap();
    assert!(!m.denoiser.has_vjp());
    let net = Network::new(
        m.denoiser.as_ref(),
        ModelKind::Diffusion,
        Parameterization::Eps,
        c.time_input(),
        JacobianMode::Exact,
    );
    assert!(net.validate().is_err());
    let shipped = ModelCard::load(&shipped("fmnist-ddpm")).unwrap();
    shipped
        .check_jacobian(&self::shipped("fmnist-ddpm"), JacobianMode::Exact)
        .unwrap();
}

#[test]
fn load_errors_name_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(dir.path(), &opts(EngineChoice::Tract))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&dir.path().join("model.yaml").display().to_string()),
        "{e}"
    );
    let missing = dir.path().join("no-such-model");
    let e = load(&missing, &opts(EngineChoice::Tract))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-model") && e.contains("not a directory"),
        "{e}"
    );
    let mut o = opts(EngineChoice::Tract);
    o.batch_size = 0;
    let e = load(&shipped("fmnist-ddpm"), &o).unwrap_err().to_string();
    assert!(e.contains("batch_size"), "{e}");
}

#[test]
fn split_vjp_roles() {
    let split =
        "  forward_residuals: denoiser_residuals.onnx\n  backward: denoiser_backward.onnx\n";
    // The split pair alone (no single vjp graph) is a VJP: exact Jacobians run on it, on every engine.
    let card = DDPM_CARD.replace("  vjp: denoiser_vjp.onnx\n", split);
    let dir = model_dir(&card);
    let c = ModelCard::load(dir.path()).unwrap();
    assert!(c.graphs.vjp.is_none() && c.graphs.has_vjp());
    c.check_jacobian(dir.path(), JacobianMode::Exact).unwrap();
    for eng in engines() {
        let m = load(dir.path(), &opts(eng)).unwrap();
        assert!(m.denoiser.has_vjp(), "{eng:?}");
    }
    // Both and the single graph: fine too (today's shipped cards).
    ModelCard::load(model_dir(&format!("{DDPM_CARD}{split}")).path()).unwrap();
    // Half a pair is a card error.
    for half in [
        "  forward_residuals: denoiser_residuals.onnx\n",
        "  backward: denoiser_backward.onnx\n",
    ] {
        let e = card_err(&format!("{DDPM_CARD}{half}"));
        assert!(e.contains("come together"), "{e}");
    }
    // A graph in the wrong role: the backward graph as forward_residuals has no x, t inputs.
    let swapped =
        "  forward_residuals: denoiser_backward.onnx\n  backward: denoiser_backward.onnx\n";
    for e in load_err(&format!("{DDPM_CARD}{swapped}"), "denoiser_backward.onnx") {
        assert!(e.contains("forward_residuals graph has inputs"), "{e}");
    }
    // Graphs that do not fit together: the plain forward returns no residuals for the backward.
    let unfit = "  forward_residuals: denoiser.onnx\n  backward: denoiser_backward.onnx\n";
    let dir = model_dir(&format!("{DDPM_CARD}{unfit}"));
    for eng in engines() {
        let e = load(dir.path(), &opts(eng)).unwrap_err().to_string();
        eprintln!("{eng:?}: {e}");
        assert!(
            e.contains("do not fit together")
                && e.contains(&dir.path().join("model.yaml").display().to_string()),
            "{eng:?}: {e}"
        );
    }
}
