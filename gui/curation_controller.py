"""The grid's curation modes, each a filter entry whose images a background job chooses:

* "Label next": the batch engine.curation.next_batch picks, in its order, each tile's tooltip saying
  why; once every image of the batch is labeled the next batch is appended below it (tiles already
  shown never move). A counter says how many images are labeled and the model's validation accuracy.
* "Review labels": the labeled images engine.curation.review ranks most likely mislabeled, each with
  its given label and the suggestion of a model that never saw it. K keeps the label (marked
  reviewed; the image leaves the queue), Enter takes the suggestion, a number key sets another class:
  every one an undoable step of the window's undo stack.
* "Look-alikes": engine.curation.duplicates' groups, members side by side.

Engine entry points are looked up on their modules when a job starts (tests replace them there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtGui import QUndoCommand
from PySide6.QtWidgets import QLabel

import engine.curation.duplicates as duplicates
import engine.curation.next_batch as next_batch
from engine.curation.look_alike_review import groups_to_review
from engine.models.metrics import Metrics
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.filter_bar import LABEL_NEXT, LOOK_ALIKES, REVIEW_LABELS, UNUSUAL
from gui.labeling import count_text
from gui.look_alike_actions import LookAlikeActions
from gui.one_per_turn import in_turn
from storage import browse, modelstore
from storage.catalog import label_states, mark_reviewed, restore_labels, reviewed_image_ids

if TYPE_CHECKING:
    import engine.curation.review as review


def review_labels(context, project):
    """engine.curation.review.review_labels, imported on the worker thread when first asked for: it brings
    scikit-learn, which the window does not need to appear."""
    from engine.runtime.first_imports import heavy_imports

    with heavy_imports():
        from engine.curation.review import review_labels as run
    return run(context, project)


def unusual_images(context, project):
    """The outlier check as a job (imported on the worker thread, like the review): its flags are stored
    too, so the CLI's ``outliers`` and the grid agree."""
    from engine.runtime.first_imports import heavy_imports

    with heavy_imports():
        from engine.curation.outliers import project_outliers
    return project_outliers(context, project)


JOB_NAMES = {LABEL_NEXT: "label-next", REVIEW_LABELS: "review-labels", LOOK_ALIKES: "look-alikes",
             UNUSUAL: "unusual-images"}
WORKING = {
    LABEL_NEXT: "Choosing the images to label next…",
    REVIEW_LABELS: "Checking every label with models that never saw it…",
    LOOK_ALIKES: "Comparing every image with the others…",
    UNUSUAL: "Looking for images unlike the others…",
}
BATCH_SIZE = next_batch.DEFAULT_COUNT


def percent(fraction: float) -> str:
    return f"{fraction * 100:.0f} %"


class KeepLabelCommand(QUndoCommand):
    """The user says these labels are right: mark them reviewed (undo puts the marks back as they were)."""

    def __init__(self, project, image_ids, on_changed):
        super().__init__(f"Keep the label of {count_text(len(image_ids), 'image')}")
        self.project = project
        self.image_ids = [int(i) for i in image_ids]
        self.on_changed = on_changed
        self.before = []

    def redo(self) -> None:
        self.before = mark_reviewed(self.project, self.image_ids)
        self.on_changed(self.image_ids)

    def undo(self) -> None:
        restore_labels(self.project, self.before)
        self.on_changed(self.image_ids)


class CurationController(QObject):
    """Runs the curation modes' jobs on the window's runner and shows their images in the grid."""

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.mode: str | None = None
        self._run = 0  # results of an older run (another mode, another project) are dropped
        self._notes: dict[int, str] = {}
        self._batch: list[int] = []  # label next: the batch shown last
        self._awaiting: set[int] = set()  # label next: team overlap images not yet labeled in this window
        self._refreshing = False
        self._score: str | None = None  # label next: the counter's words about the model in use
        self._suspects: dict[int, review.Suspect] = {}  # review: by image id, in queue order
        self.summary = QLabel()
        self.summary.setVisible(False)
        self.summary.setContentsMargins(12, 0, 4, 0)  # apart from the project's counts beside it
        window.statusBar().addPermanentWidget(self.summary)
        self.look_alikes = LookAlikeActions(window, self._show_groups, self._rerun_look_alikes)
        window.filter_bar.curation_requested.connect(self.start)
        window.filter_bar.query_changed.connect(self._query_changed)
        window.labels_changed.connect(self._labels_changed)
        window.project_changed.connect(lambda _project: self._leave())
        window.runner.succeeded.connect(self._job_succeeded)
        window.grid.selectionModel().selectionChanged.connect(lambda *_: self._selection_changed())

    @property
    def project(self):
        return self.window.project

    # -- running a mode -------------------------------------------------------------------------
    def start(self, mode: str) -> None:
        """Choose this mode's images afresh in the background; the grid shows them when ready."""
        if self.project is None:
            return
        self.mode = mode
        self._run += 1
        for name in JOB_NAMES.values():
            self.window.runner.cancel(name)
        self._say(WORKING[mode])
        jobs = {
            LABEL_NEXT: (next_batch.next_images, (self.project, BATCH_SIZE)),
            REVIEW_LABELS: (review_labels, (self.project,)),
            LOOK_ALIKES: (duplicates.project_duplicates, (self.project,)),
            UNUSUAL: (unusual_images, (self.project,)),
        }
        shows = {LABEL_NEXT: self._show_batch, REVIEW_LABELS: self._show_review, LOOK_ALIKES: self._show_groups,
                 UNUSUAL: self._show_unusual}
        function, args = jobs[mode]
        self._refreshing = mode == LABEL_NEXT
        self._submit(mode, function, args, shows[mode])

    def _submit(self, mode: str, function, args, show) -> None:
        run = self._run

        def done(outcome: JobOutcome) -> None:
            if mode == LABEL_NEXT:
                self._refreshing = False
            if run != self._run or self.project is None:
                return
            if outcome.status is JobStatus.DONE:
                show(outcome.result)
            elif outcome.status is JobStatus.FAILED:
                self._say(outcome.error)

        self.window.runner.submit(JOB_NAMES[mode], function, *args, on_done=done)

    def _leave(self) -> None:
        """Another filter or project: forget the mode and drop the results of its running job."""
        self.mode = None
        self._run += 1
        self._notes, self._batch, self._suspects, self._score = {}, [], {}, None
        self.window.grid_model.set_notes({})
        self.look_alikes.set_groups([])
        self.summary.setVisible(False)
        self.summary.setContentsMargins(12, 0, 4, 0)  # apart from the project's counts beside it

    def _query_changed(self, _query) -> None:
        if self.mode is not None and self.window.filter_bar.curation_mode() is None:
            self._leave()

    def _say(self, text: str) -> None:
        self.summary.setText(text)
        self.summary.setToolTip(text)
        self.summary.setVisible(True)

    def _selection_changed(self) -> None:
        """The current tile's reason in the status bar (the tooltip says it too)."""
        ids = self.window.selected_image_ids() if self.mode is not None else []
        note = self._notes.get(ids[0]) if len(ids) == 1 else None
        if note:
            self.window.statusBar().showMessage(note)

    def _shown_ids(self) -> list[int]:
        return self.window.grid_model.ids.tolist()

    # -- label next -----------------------------------------------------------------------------
    def _show_batch(self, batch: next_batch.NextBatch) -> None:
        ids = [image.image_id for image in batch.images]
        self._notes = {image.image_id: image.reason for image in batch.images}
        self._batch = ids
        self._awaiting = {image.image_id for image in batch.images if image.overlap}
        self.window.grid_model.set_notes(self._notes)
        self.window.filter_bar.show_curation(LABEL_NEXT, ids)
        if ids:
            self.window.grid.select_rows([0])
        self._show_counter()

    def _append_batch(self, batch: next_batch.NextBatch) -> None:
        """The next batch goes below the images shown: no tile moves under the user's cursor."""
        shown = self._shown_ids()
        known = set(shown)
        new = [image for image in batch.images if image.image_id not in known]
        if not new:
            return
        was_at_end = self.window.grid.currentIndex().row() in (-1, len(shown) - 1)
        self._notes.update({image.image_id: image.reason for image in new})
        self._batch = [image.image_id for image in new]
        self._awaiting |= {image.image_id for image in new if image.overlap}
        self.window.grid_model.set_notes(self._notes)
        self.window.filter_bar.show_curation(LABEL_NEXT, shown + self._batch, emit=False)
        self.window.append_to_grid(self._batch)
        if was_at_end:  # the user labeled the last one and waits for more
            self.window.grid.select_rows([len(shown)])

    def _batch_done(self) -> bool:
        states = label_states(self.project, self._batch)
        return (bool(states) and all(state.class_id is not None for state in states)
                and not self._awaiting.intersection(self._batch))  # a teammate's label is not yours

    def _show_counter(self, model_changed: bool = True) -> None:
        """"You labeled N images · the model is right on P %": after a label only the count is new
        (the window has just read it), so the model is read again only when it may have changed."""
        summary = self.window.label_summary
        labeled = summary.labeled if summary is not None else browse.image_and_label_counts(self.project)[1]
        if model_changed or self._score is None:
            model = modelstore.active_model(self.project)
            accuracy = Metrics.from_json(model.metrics).accuracy if model is not None else None
            self._score = (f"the model is right on {percent(accuracy)} of its tests" if accuracy is not None
                           else "no model yet")
        self._say(f"You labeled {count_text(labeled, 'image')} · {self._score}")

    def _job_succeeded(self, _name: str, _result) -> None:
        if self.mode == LABEL_NEXT and self.project is not None:
            in_turn(self._show_counter_after_training, self)  # a retrain changes the accuracy

    def _show_counter_after_training(self) -> None:
        if self.mode == LABEL_NEXT and self.project is not None:
            self._show_counter()

    def _labels_changed(self, image_ids) -> None:
        if self.project is None:
            return
        if self.mode == LABEL_NEXT:
            self._awaiting.difference_update(image_ids)
            self._show_counter(model_changed=False)
            if self._batch and not self._refreshing and self._batch_done():
                self._refreshing = True
                self._submit(LABEL_NEXT, next_batch.next_images, (self.project, BATCH_SIZE), self._append_batch)
        elif self.mode == REVIEW_LABELS:
            self._note_suspects([i for i in image_ids if i in self._suspects])

    # -- review labels --------------------------------------------------------------------------
    def _show_review(self, result: review.LabelReview) -> None:
        kept = reviewed_image_ids(self.project)
        suspects = [s for s in result.suspects(limit=result.suggested_count) if s.image_id not in kept]
        self._suspects = {s.image_id: s for s in suspects}
        self._notes = {}
        self._note_suspects(list(self._suspects))
        self._show_queue(anchor_row=0)

    def _note_suspects(self, image_ids: list[int]) -> None:
        """'labeled ants · looks like bees 92 %', with the label each image has now."""
        names = {info.id: info.name for info in self.window.classes_panel.classes}
        for state in label_states(self.project, image_ids):
            suspect = self._suspects[state.image_id]
            given = names.get(state.class_id, "nothing") if state.class_id is not None else "nothing"
            self._notes[state.image_id] = (f"labeled {given} · looks like {names.get(suspect.suggested, '?')} "
                                           f"{percent(suspect.suggested_probability)}")
        self.window.grid_model.set_notes(self._notes)
        self.window.grid_model.refresh_tiles(image_ids)

    def _show_queue(self, anchor_row: int, select_ids=()) -> None:
        """Show the suspects not kept yet; select ``select_ids`` if shown, else the row at ``anchor_row``."""
        kept = reviewed_image_ids(self.project)
        queue = [i for i in self._suspects if i not in kept]
        self.window.filter_bar.show_curation(REVIEW_LABELS, queue)
        rows = [row for row in (self.window.grid_model.row_of(i) for i in select_ids) if row is not None]
        if not rows and queue:
            rows = [min(anchor_row, len(queue) - 1)]
        self.window.grid.select_rows(rows)
        if len(queue) == 1:
            self._say("1 image is worth a look")
        else:
            self._say(f"{len(queue):,} images are worth a look" if queue else "No label looks wrong")

    def keep_label(self) -> None:
        """K: the selected labels are right; they leave the queue (undoable)."""
        if self.mode != REVIEW_LABELS:
            self.window.show_message("K keeps a label in “Review labels” (in the Show list).", 4000)
            return
        ids = [i for i in self.window.selected_image_ids() if i in self._suspects]
        if ids:
            self.window.undo_stack.push(KeepLabelCommand(self.project, ids, self._kept_changed))

    def _kept_changed(self, image_ids: list[int]) -> None:
        rows = [row for row in (self.window.grid_model.row_of(i) for i in image_ids) if row is not None]
        self.window.grid_model.refresh_tiles(image_ids)
        if self.mode == REVIEW_LABELS:
            self._show_queue(anchor_row=min(rows, default=0), select_ids=image_ids)

    def take_suggestion(self) -> bool:
        """Enter in "Review labels": label the selected suspects with their suggestion (one undoable
        step); False in other modes, where Enter accepts the model's suggestions as usual."""
        if self.mode != REVIEW_LABELS or self.project is None:
            return False
        ids = [i for i in self.window.selected_image_ids() if i in self._suspects]
        by_class: dict[int, list[int]] = {}
        for image_id in ids:
            by_class.setdefault(self._suspects[image_id].suggested, []).append(image_id)
        stack = self.window.undo_stack
        if len(by_class) > 1:
            stack.beginMacro(f"Take {count_text(len(ids), 'suggestion')}")
        for class_id, group in by_class.items():
            stack.push(self.window.make_label_command(group, class_id))
        if len(by_class) > 1:
            stack.endMacro()
        if len(ids) == 1:
            self.window.labeling.advance()
        return True

    # -- look-alikes ----------------------------------------------------------------------------
    def _rerun_look_alikes(self) -> None:
        if self.mode == LOOK_ALIKES:
            self.start(LOOK_ALIKES)

    def _show_groups(self, groups: list[duplicates.DuplicateGroup]) -> None:
        groups = groups_to_review(self.project, groups)  # not those the user kept whole
        self.look_alikes.set_groups(groups)
        ids: list[int] = []
        self._notes = {}
        for number, group in enumerate(groups, start=1):
            ids.extend(group.image_ids)
            for image_id in group.image_ids:
                self._notes[image_id] = (f"Group {number} of {len(groups)}: {len(group.image_ids)} images, "
                                         f"{group.kind} ({percent(group.similarity)} alike)")
        self.window.grid_model.set_notes(self._notes)
        self.window.filter_bar.show_curation(LOOK_ALIKES, ids)
        if ids:
            self.window.grid.select_rows([0])  # its group in the status bar
        self._say(f"{count_text(len(groups), 'group')} of look-alike images" if groups else "No look-alike images")

    def _show_unusual(self, flagged) -> None:
        """Most unusual first, each tile noting where it does not fit."""
        self._notes = {o.image_id: "; ".join(o.reasons).capitalize() for o in flagged}
        self.window.grid_model.set_notes(self._notes)
        self.window.filter_bar.show_curation(UNUSUAL, [o.image_id for o in flagged])
        self._say(f"{count_text(len(flagged), 'image')} unlike the others" if flagged
                  else "No unusual images: every image looks like others of its class and of the project")
