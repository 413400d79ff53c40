"""``lethe``: bootstrap the embedded default, run forget jobs offline (the same job code the
service runs), evaluate, import a generator trained elsewhere, list and activate versions,
and show the audit trail. (``serve`` and ``worker`` are added by ``service.cli``, the
``lethe`` program.)"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unlearning.errors import LetheError
from unlearning.runtime import DEFAULT_DOMAIN, DEFAULT_MODEL, lethe_home


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from unlearning.bootstrap import bootstrap
    from unlearning.registry import Registry

    summary = bootstrap(domain=args.domain, models=args.model or None, epochs=args.epochs, seed=args.seed,
                        show_progress=not args.quiet)
    if args.json:
        _print_json(summary)
        return 0
    built = ", ".join(summary["built"]) or "nothing (already bootstrapped)"
    print(f"built: {built}")
    print(f"domain {summary['domain']}: held-out accuracy guide {summary['guide']['held_out_accuracy']:.4f}, "
          f"judge {summary['judge']['held_out_accuracy']:.4f}")
    registry = Registry()
    for model, version in summary["models"].items():
        quality = registry.get(version).metrics.get("quality", {}) if version else {}
        print(f"active {model}: {version}  {_headline(quality)} ({quality.get('extractor', '-')})")
    return 0


def cmd_domains(args: argparse.Namespace) -> int:
    from unlearning.registry import Registry

    registry = Registry()
    domains = registry.list_domains()
    models: dict[str, list[str]] = {}
    for model in registry.models():
        active = registry.active(model)
        if active:
            models.setdefault(registry.get(active).domain_name or "?", []).append(model)
    if args.json:
        _print_json([{**d.model_dump(mode="json"), "models": models.get(d.name, [])} for d in domains])
        return 0
    if not domains:
        print("no domains yet: run `lethe bootstrap` or `lethe domain add NAME --data PATH`")
    for d in domains:
        c, h, w = d.image_shape
        m = d.metrics
        print(f"{d.name:16} {w}x{h}x{c}  {len(d.labels)} classes  train {d.sizes.get('train', 0):,}  "
              f"held-out {d.sizes.get('held_out', 0):,}  guide {d.guide!r} {m['guide']['held_out_accuracy']:.3f}  "
              f"judge {m['judge']['held_out_accuracy']:.3f}  models: {', '.join(models.get(d.name, [])) or '-'}")
    return 0


def cmd_domain_add(args: argparse.Namespace) -> int:
    from unlearning.domains.datasets import read_dataset
    from unlearning.domains.register import register_domain
    from unlearning.registry import Registry
    from unlearning.runtime import pick_device

    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    data = read_dataset(Path(args.data), label_names=labels)
    manifest = register_domain(
        Registry(), args.name, data.train, data.held_out, data.labels, min_accuracy=args.min_accuracy,
        device=pick_device(), show_progress=not args.quiet, source=f"{data.source}: {Path(args.data).name}",
    )
    if args.json:
        _print_json(manifest.model_dump(mode="json"))
        return 0
    c, h, w = manifest.image_shape
    m = manifest.metrics
    print(f"domain {manifest.name}: {len(manifest.labels)} classes ({', '.join(manifest.labels)}), {w}x{h}x{c}, "
          f"train {manifest.sizes['train']:,}, held-out {manifest.sizes['held_out']:,}")
    print(f"held-out accuracy: guide {manifest.guide!r} {m['guide']['held_out_accuracy']:.4f} "
          f"({manifest.sizes['guide']:,} images), judge {m['judge']['held_out_accuracy']:.4f} "
          f"({manifest.sizes['judge']:,} images); they agree on {m['agreement_held_out']:.1%}")
    print(f"next: `lethe bootstrap --domain {manifest.name}` trains a DCGAN for it")
    return 0


def _audit(write) -> None:
    """Append the CLI's audit entry with ``write(store, actor)``; the change it records has
    happened, so a trail that cannot be written is only a warning."""
    from unlearning.store import open_store
    from unlearning.store.events import cli_actor

    try:
        written = write(open_store(), cli_actor())
    except Exception as exc:
        written, why = False, f": {exc}"
    else:
        why = " (see the log above)"
    if not written:
        print(f"lethe: warning: the audit entry could not be written{why}", file=sys.stderr)


def cmd_redact(args: argparse.Namespace) -> int:
    from unlearning.store.events import record_version_event
    from unlearning.jobs import run_redaction
    from unlearning.progress import progress_bar
    from unlearning.registry import Registry
    from unlearning.spec import load_spec

    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    uploads = Path(args.uploads) if args.uploads else spec_path.resolve().parent
    report_root = Path(args.report) if args.report else lethe_home() / "reports"
    with progress_bar(f"redact '{spec.name}'", not args.quiet) as callbacks:
        outcome = run_redaction(
            spec, parent=args.from_version, uploads_dir=uploads, callbacks=callbacks,
            report_dir=report_root / spec.name, activate=not args.no_activate,
            inception_weights=args.inception_weights, model=args.model,
        )
    _audit(lambda store, actor: record_version_event(
        store, outcome.status, Registry().get(outcome.version), actor,
        {"activated": outcome.activated, "method": outcome.method, "reason": outcome.reason, "offline": True}))
    if args.json:
        _print_json(outcome.model_dump(mode="json"))
        return 0 if outcome.status == "promoted" else 3
    print(f"{outcome.version} ({outcome.method}, from {outcome.parent}): {outcome.status.upper()}"
          f"{' and active' if outcome.activated else ''} in {outcome.duration_s:.1f} s")
    print(f"{'':16}{'before':>12}{'after':>12}")
    if "retain" in outcome.after:  # an image-to-image model: quality per input set
        for name in ("forget", "retain"):
            for key in ("fid", "l1", "invalidity"):
                label = f"{name} {key}"
                print(f"{label:16}{_fmt(outcome.before[name].get(key)):>12}{_fmt(outcome.after[name].get(key)):>12}")
        print(f"(restorations against the real inputs; FID extractor: {outcome.after['extractor']})")
    else:
        for key in ("invalidity", "fid", "filtered_fid", "inception_score"):
            print(f"{key:16}{_fmt(outcome.before.get(key)):>12}{_fmt(outcome.after.get(key)):>12}")
        print(f"(FID extractor: {outcome.after['extractor']}, {outcome.after['samples']} samples)")
        if "attack" in outcome.after:
            b, a = outcome.before["attack"], outcome.after["attack"]
            for label, value in (("gradient attack", lambda d: d.get("attack_invalidity")),
                                 ("fooled share", lambda d: d.get("fooled_share")),
                                 ("inversion", lambda d: (d.get("inversion") or {}).get("attack_invalidity")),
                                 ("worst case", lambda d: d.get("worst_case"))):
                print(f"{label:16}{_fmt(value(b)):>12}{_fmt(value(a)):>12}")
            print(f"(attacks judged by {a['judged_by']})")
    for gate in outcome.gates:
        print(f"gate {gate.name:14} {'pass' if gate.passed else 'FAIL'}  {_fmt(gate.value)} (limit {_fmt(gate.limit)})")
    if outcome.reason:
        print(f"not promoted: {outcome.reason}")
    print(f"report: {outcome.report_dir}/index.html")
    return 0 if outcome.status == "promoted" else 3


def cmd_eval(args: argparse.Namespace) -> int:
    from unlearning.evaluation import judge, load_domain
    from unlearning.jobs import prepare_redaction_set
    from unlearning.registry import Registry
    from unlearning.runtime import pick_device
    from unlearning.spec import load_spec

    registry = Registry()
    manifest = registry.verify(args.version)
    device = pick_device()
    domain = load_domain(registry, manifest, device=device, inception_weights=args.inception_weights)
    omega = judged = spec = None
    if args.spec:
        spec_path = Path(args.spec)
        uploads = Path(args.uploads) if args.uploads else spec_path.resolve().parent
        # marks in a spec were made on the samples of the version's parent
        sets = prepare_redaction_set(load_spec(spec_path), registry, domain, uploads,
                                     marks_from=manifest.parent or manifest.version)
        omega, judged, spec = sets.omega, sets.judged, sets.spec
    if manifest.image_to_image:
        return _eval_inpainter(args, registry, domain, omega, judged)
    generator = registry.load_generator(args.version).to(device)
    result = judge(generator, domain, n=args.samples, seed=args.seed, omega=omega, judged=judged,
                   filtered=omega is not None)
    result["version"] = args.version
    if omega is not None and omega.has_judge and args.attack_starts:
        from unlearning.jobs.attacks import run_attacks
        from unlearning.metrics import AttackSettings, InversionSettings

        marked_by = registry.load_generator(manifest.parent).to(device) if omega.feedback and manifest.parent \
            else generator  # marks were made on the samples of the version's parent
        attacks, _ = run_attacks({"version": generator}, spec, omega, judged, domain, marked_by=marked_by,
                                 gradient=AttackSettings(starts=args.attack_starts),
                                 inversion=InversionSettings(targets=max(args.inversion_targets, 1)),
                                 invert=args.inversion_targets > 0)
        result["attack"] = attacks["version"]
    if args.json:
        _print_json(result)
        return 0
    by = result["judged_by"]
    for key in ("version", "samples", "invalidity", "judge_invalidity", "fid", "filtered_fid", "inception_score",
                "extractor"):
        if key in result:
            print(f"{key:16}{_fmt(result[key])}" + (f"  (by {by[key]})" if key in by else ""))
    print("class shares    " + " ".join(f"{s:.3f}" for s in result["class_shares"]) + f"  (by {by['class_shares']})")
    if "attack" in result:
        _print_attacks(result["attack"])
    return 0


def _print_attacks(attack: dict) -> None:
    """The worst case (gradient and inversion attacks), judged by the verdict it names."""
    print(f"worst case      {_fmt(attack['worst_case'])}  (by {attack['judged_by']})")
    print(f"  gradient      {_fmt(attack.get('attack_invalidity'))} of {attack['starts']} starts end in Omega; "
          f"the climbed checks say {_fmt(attack.get('climbed_invalidity'))}, fooled share "
          f"{_fmt(attack.get('fooled_share'))}; random {_fmt(attack['random_invalidity'])}")
    print("  truncation    " + ", ".join(f"psi {psi}: {_fmt(v)}" for psi, v in attack["truncation"].items()))
    inversion = attack.get("inversion") or {}
    if inversion.get("skipped"):
        print(f"  inversion     skipped: {inversion['skipped']}")
    elif inversion:
        print(f"  inversion     {_fmt(inversion.get('attack_invalidity'))} of {inversion['targets']} real examples "
              f"reconstructed in Omega (targets: {_fmt(inversion.get('target_invalidity'))}; mean squared error "
              f"{_fmt(inversion['mse']['mean'])}; {inversion['seconds']:.1f} s)")


def _eval_inpainter(args: argparse.Namespace, registry, domain, omega, judged) -> int:
    """An image-to-image version: restoration quality on the held-out images, split into
    forget and retain inputs when a spec is given."""
    from unlearning.evaluation import judge_inpainter
    from unlearning.jobs import forget_mask

    held_out = domain.held_out.images.to(domain.device)
    if omega is None:
        inputs = {"held_out": held_out}
    else:
        mask = forget_mask(omega, held_out)
        inputs = {"forget": held_out[mask], "retain": held_out[~mask]}
    result = judge_inpainter(registry.load_inpainter(args.version), domain, inputs, omega, judged)
    result["version"] = args.version
    if args.json:
        _print_json(result)
        return 0
    print(f"{args.version} (image-to-image; restorations against the real inputs, extractor {result['extractor']})")
    for name in inputs:
        r = result[name]
        print(f"{name:10} images {r['images']:5}  fid {_fmt(r['fid'])}  l1 {_fmt(r['l1'])}"
              + (f"  invalidity {_fmt(r['invalidity'])}" if "invalidity" in r else ""))
    return 0


def _headline(metrics: dict) -> str:
    """The numbers `lethe models` shows for a version: a generator's, or an inpainter's per set."""
    if "retain" in metrics:
        return f"retain_fid={_fmt(metrics['retain'].get('fid'))} forget_fid={_fmt(metrics['forget'].get('fid'))}"
    if "held_out" in metrics:
        return f"restoration_fid={_fmt(metrics['held_out'].get('fid'))}"
    return f"invalidity={_fmt(metrics.get('invalidity'))} fid={_fmt(metrics.get('fid'))}"


def cmd_models(args: argparse.Namespace) -> int:
    from unlearning.registry import Registry

    registry = Registry()
    versions = registry.list_versions()
    active = {registry.active(m) for m in registry.models()}
    if args.json:
        _print_json([{**v.model_dump(mode="json", exclude={"metrics"}), "active": v.version in active}
                     for v in versions])
        return 0
    if not versions:
        print("no versions yet: run `lethe bootstrap`")
    for v in versions:
        after = v.metrics.get("after") or v.metrics.get("quality") or {}
        marker = "*" if v.version in active else " "
        name = (v.spec or {}).get("name", "base")
        print(f"{marker} {v.version:14} {v.status:9} parent={_fmt(v.parent):12} spec={name:18} {_headline(after)}")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    from unlearning.store.events import record_activation
    from unlearning.registry import Registry

    registry = Registry()
    try:
        previous = registry.active(registry.get(args.version).model)
    except LetheError:
        previous = None  # activate names the problem
    manifest = registry.activate(args.version, force=args.force)
    _audit(lambda store, actor: record_activation(store, manifest, actor, previous=previous, force=args.force))
    print(f"active {manifest.model}: {manifest.version}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from unlearning.store import open_store

    entries = open_store().audit_log(limit=args.limit)
    if args.json:
        _print_json([e.model_dump(mode="json") for e in entries])
        return 0
    if not entries:
        print("no audit entries yet")
    for e in entries:
        what = " ".join(f"{k}={v}" for k, v in (("job", e.job_id), ("model", e.model), ("version", e.version),
                                                   ("parent", e.parent), ("spec", e.spec_name)) if v)
        spec = f" spec_hash={e.spec_hash[:12]}" if e.spec_hash else ""
        print(f"{e.seq:6} {e.time[:19]}Z {e.actor:18} {e.action:9} {what}{spec}"
              f"{' ' + json.dumps(e.detail, sort_keys=True) if e.detail else ''}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """A generator trained elsewhere as version 1 of a new model (``unlearning.importing``)."""
    from unlearning.importing import import_model
    from unlearning.registry import Registry
    from unlearning.store.events import record_import

    manifest = import_model(Registry(), args.model, args.domain, Path(args.path), activate=not args.no_activate)
    _audit(lambda store, actor: record_import(store, manifest, actor, activated=not args.no_activate))
    if args.json:
        _print_json(manifest.model_dump(mode="json"))
        return 0
    parts = manifest.metrics["import"]["components"]
    print(f"imported {manifest.version} (domain {manifest.domain}): "
          + ", ".join(f"{stem} {c['kind']} ({c['source']})" for stem, c in parts.items()))
    quality = manifest.metrics.get("quality", {})
    print(f"quality: fid={_fmt(quality.get('fid'))} inception_score={_fmt(quality.get('inception_score'))} "
          f"({quality.get('samples', '-')} samples, {quality.get('extractor', '-')}); "
          f"ONNX parity {_fmt(manifest.metrics.get('onnx_parity'))}")
    if args.no_activate:
        print(f"not activated: `lethe activate {manifest.version}` serves it")
    else:
        print(f"active {manifest.model}: {manifest.version}")
    return 0


def build_parser(service_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The library's commands; ``service_commands(subparsers)`` adds the ones that run the
    service (``serve``, ``worker``: ``service.cli``, the ``lethe`` program), so that the
    library never imports the service."""
    parser = argparse.ArgumentParser(prog="lethe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="build a domain and its base models (idempotent; default: digits)")
    p.add_argument("--domain", default=DEFAULT_DOMAIN,
                   help="a built-in domain (digits, fashion-mnist) or one registered with `lethe domain add`")
    p.add_argument("--model", action="append", default=None,
                   help="build only this model of the domain (repeatable; default: all of them)")
    p.add_argument("--epochs", type=int, default=None,
                   help="pre-training epochs (default: the domain's CPU schedule, the full one on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("domains", help="list the registered domains (data, guide and judge)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_domains)

    p = sub.add_parser("domain", help="register a domain from your own labelled data")
    dsub = p.add_subparsers(dest="domain_command", required=True)
    p = dsub.add_parser("add", help="read, check and register a dataset; train its guide and judge")
    p.add_argument("name", help="the domain's name (its guide classifier takes the same name)")
    p.add_argument("--data", required=True,
                   help="MNIST-style IDX (a folder, or an images file with its labels file beside it), an npz, "
                        "or a folder of PNGs with one sub-folder per class")
    p.add_argument("--labels", default=None, help="class names, comma-separated, in label order")
    p.add_argument("--min-accuracy", type=float, default=0.8,
                   help="held-out accuracy both classifiers must reach (default 0.8)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_domain_add)

    p = sub.add_parser("redact", help="run a forget job offline (same code as the API)")
    p.add_argument("spec", help="forget specification, JSON or YAML")
    p.add_argument("--from", dest="from_version", default=None, help="parent version (default: the model's active)")
    p.add_argument("--model", default=None, help=f"hosted model, e.g. fashion or digits-inpainter (default: the only served one, else {DEFAULT_MODEL})")
    p.add_argument("--uploads", default=None, help="folder holding the spec's files (default: the spec's folder)")
    p.add_argument("--report", default=None, help="report root (default: $LETHE_HOME/reports)")
    p.add_argument("--no-activate", action="store_true", help="register but do not activate")
    p.add_argument("--inception-weights", type=Path, default=None, help="Inception weights file for FID")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_redact)

    p = sub.add_parser("eval", help="invalidity, IS, FID and worst-case (gradient and inversion attack) "
                                    "invalidity of a version")
    p.add_argument("version")
    p.add_argument("--spec", default=None, help="judge invalidity against this forget specification")
    p.add_argument("--uploads", default=None)
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack-starts", type=int, default=256,
                   help="random latents for the gradient attack (0: skip both attacks)")
    p.add_argument("--inversion-targets", type=int, default=32,
                   help="real examples of what was forgotten the inversion attack reproduces (0: skip it)")
    p.add_argument("--inception-weights", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("import", help="register a generator trained elsewhere as version 1 of a new model")
    p.add_argument("model", help="the new model's name")
    p.add_argument("--domain", required=True, help="the registered domain it generates (`lethe domains`)")
    p.add_argument("path", help="a folder: generator.safetensors + generator.json (a built-in kind or a "
                                "lethe.models plugin) or generator.onnx, optionally discriminator.* the same way")
    p.add_argument("--no-activate", action="store_true", help="register it without serving it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    if service_commands is not None:
        service_commands(sub)

    p = sub.add_parser("models", help="list versions (* = active)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("activate", help="activate a version (promote or roll back)")
    p.add_argument("version")
    p.add_argument("--force", action="store_true", help="also activate a rejected version")
    p.set_defaults(func=cmd_activate)

    p = sub.add_parser("audit", help="the audit trail of admin actions and job outcomes, newest first")
    p.add_argument("--limit", type=int, default=100, help="entries to show (1-1000, default 100)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    try:
        return args.func(args)
    except LetheError as exc:
        print(f"lethe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lethe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lethe models | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
