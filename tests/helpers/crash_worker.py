"""Child process for tests/test_crash_safety.py: works on a project until the parent SIGKILLs it.

Usage: ``python tests/helpers/crash_worker.py PROJECT IMAGE_FOLDER SEED TASKS`` where TASKS is a
comma list of ``import``, ``label`` and ``train``. Every line goes to stdout, flushed, in one write:

- ``ready``                      the project is open and the tasks are starting;
- ``begin <image_id> <class>``   a label write is about to start (class is an id or ``none``);
- ``saved <image_id> <class>``   that label write's commit RETURNED (so it must survive a kill);
- ``images <id> <id> ...``       an import batch's commit returned with these image ids;
- ``training-started``           a training (fit, evaluation, predictions, model save) begins;
- ``model <version>``            that training returned this model version;
- ``features-started``           a feature extraction (a few batches) begins; ``features ...`` ends it;
- ``error <task> <message>``     a task failed (the parent fails the test on this).

The parent kills this process at a random moment; nothing here cleans up on purpose.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

_OUT_LOCK = threading.Lock()
# A tight labeling loop in the same process slows a training ~20x (0.8 s alone, 15-25 s beside it),
# so no kill would ever come after a finished training; 20 ms is still 50 labels a second.
LABEL_PAUSE_BESIDE_TRAINING_S = 0.02


def emit(line: str) -> None:
    with _OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _class_text(class_id: int | None) -> str:
    return "none" if class_id is None else str(class_id)


def label_task(project, rng: random.Random, pause: float = 0.0) -> None:
    """A labeling session like the GUI's: label one or a few images, sometimes undo the last step.

    ``pause`` seconds between steps: 0 is a tight loop (the harshest stress); beside a training
    thread a short pause (still far faster than any person) lets the training finish now and then."""
    from storage import catalog
    from storage.images import image_ids

    class_ids = [c.id for c in catalog.list_classes(project)]
    ids = image_ids(project)
    undo_stack: list[list] = []
    step = 0
    while True:
        step += 1
        if pause:
            time.sleep(pause)
        if step % 25 == 0:
            ids = image_ids(project)  # pick up what the import thread added
        if undo_stack and rng.random() < 0.15:
            states = undo_stack.pop()
            for state in states:
                emit(f"begin {state.image_id} {_class_text(state.class_id)}")
            catalog.restore_labels(project, states)
            for state in states:
                emit(f"saved {state.image_id} {_class_text(state.class_id)}")
            continue
        chosen = rng.sample(ids, k=min(len(ids), rng.choice([1, 1, 1, 2, 5])))
        class_id = rng.choice(class_ids + [None]) if rng.random() < 0.1 else rng.choice(class_ids)
        for image_id in chosen:
            emit(f"begin {image_id} {_class_text(class_id)}")
        before = catalog.set_labels(project, chosen, class_id)
        for image_id in chosen:
            emit(f"saved {image_id} {_class_text(class_id)}")
        undo_stack.append(before)


def import_task(project, folder: Path) -> None:
    import engine.images.importing as importing
    from engine.runtime.jobs import JobContext

    original = importing.add_images

    def reporting_add_images(project_, rows):
        ids = original(project_, rows)
        emit("images " + " ".join(map(str, ids)))
        return ids

    importing.add_images = reporting_add_images
    report = importing.import_paths(JobContext(), project, [folder], labels_from_folders=True)
    emit(f"imported {report.imported} failed {len(report.failed)}")


def train_task(project) -> None:
    """Train on the features already cached (fast), then extract features for a few batches, again.

    Both write: a training run and a model version with its predictions, and feature batches."""
    from engine.runtime.jobs import JobCancelled, JobContext
    from engine.features.extraction import ensure_features
    from engine.models.training import resolve_backbone, train_on_cached_features

    backbone, layer = resolve_backbone(None, None)
    while True:
        emit("training-started")
        result = train_on_cached_features(JobContext(), project, "logreg", backbone, layer)
        emit(f"model {result.model_version}")
        cancel = threading.Event()
        calls = [0]

        def stop_after_a_few(_fraction, _message, cancel=cancel, calls=calls):
            calls[0] += 1
            if calls[0] > 4:
                cancel.set()

        context = JobContext(stop_after_a_few, None, cancel)
        emit("features-started")
        try:
            info = ensure_features(context, project, backbone, layer)
            emit(f"features done {info.extracted}")
        except JobCancelled:
            emit("features partial")


def _run(name: str, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # reported to the parent, which fails the test
        emit(f"error {name} {exc.__class__.__name__}: {exc}".replace("\n", " "))
        traceback.print_exc(file=sys.stderr)


def main() -> int:
    project_path, folder, seed, tasks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
    from storage.project import open_project

    project = open_project(project_path)
    rng = random.Random(seed)
    threads = []
    if "import" in tasks:
        threads.append(threading.Thread(target=_run, args=("import", import_task, project, folder), daemon=True))
    if "label" in tasks:
        pause = LABEL_PAUSE_BESIDE_TRAINING_S if "train" in tasks else 0.0
        threads.append(threading.Thread(target=_run, args=("label", label_task, project, rng, pause), daemon=True))
    if "train" in tasks:
        threads.append(threading.Thread(target=_run, args=("train", train_task, project), daemon=True))
    emit("ready")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    emit("finished")
    time.sleep(60)  # stay alive until killed, like a user who keeps the app open
    return 0


if __name__ == "__main__":
    sys.exit(main())
