"""The training panel's choices: the method in plain words (from the method registry), automatic
retraining, and, folded away under Advanced, the network and its feature layer."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QLabel,
    QRadioButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.features.backbones import DEFAULT_BACKBONE
from engine.insight.options import BackboneChoice
from engine.models.methods import TrainingMethod, panel_methods
from engine.runtime.edition import FULL_EDITION_HINT, torch_available


class TrainingOptionsForm(QWidget):
    """Method radio buttons, the auto-retrain box and the Advanced fold (backbone, layer)."""

    method_changed = Signal(object)  # the chosen TrainingMethod

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.methods = panel_methods()
        # The CPU edition has no PyTorch: its torch methods stay visible but off, saying why.
        self.unavailable = set() if torch_available() else {m.name for m in self.methods if m.needs_torch}
        self.method_buttons: dict[str, QRadioButton] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for method in self.methods:
            button = QRadioButton(method.choice)
            button.setToolTip(f"Uses {method.description}.")
            if method.name in self.unavailable:
                button.setText(f"{method.choice} (full edition only)")
                button.setToolTip(f"{method.title} training needs the full edition: {FULL_EDITION_HINT}")
                button.setEnabled(False)
            button.toggled.connect(lambda on: on and self.method_changed.emit(self.method))
            self.method_buttons[method.name] = button
            layout.addWidget(button)
        self.method_buttons[self.methods[0].name].setChecked(True)

        self.auto_retrain = QCheckBox("Retrain by itself when labels change (Quick only)")
        self.auto_retrain.setChecked(True)
        layout.addWidget(self.auto_retrain)
        # Said, not only implied by a greyed-out box: with another method nothing retrains by itself.
        self.auto_retrain_note = QLabel()
        self.auto_retrain_note.setWordWrap(True)
        self.auto_retrain_note.setIndent(22)
        self.auto_retrain_note.setVisible(False)
        layout.addWidget(self.auto_retrain_note)
        self.method_changed.connect(self._show_auto_retrain)

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        self.advanced = QFrame()
        form = QFormLayout(self.advanced)
        form.setContentsMargins(18, 0, 0, 0)
        self.backbone_combo = QComboBox()
        self.layer_combo = QComboBox()
        form.addRow("Network (backbone):", self.backbone_combo)
        form.addRow("Feature layer:", self.layer_combo)
        self.advanced.setVisible(False)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        self._backbones: list[BackboneChoice] = []
        self.backbone_combo.currentIndexChanged.connect(self._fill_layers)

    @property
    def method(self) -> TrainingMethod:
        return next(m for m in self.methods if self.method_buttons[m.name].isChecked())

    def set_method(self, name: str) -> None:
        self.method_buttons[name].setChecked(True)

    @property
    def backbone(self) -> str:
        return self.backbone_combo.currentData() or DEFAULT_BACKBONE

    @property
    def layer(self) -> str | None:
        return self.layer_combo.currentData()

    def set_backbones(self, backbones: Sequence[BackboneChoice]) -> None:
        self._backbones = list(backbones)
        self.backbone_combo.blockSignals(True)
        self.backbone_combo.clear()
        for choice in self._backbones:
            suffix = " (default)" if choice.name == DEFAULT_BACKBONE else ""
            self.backbone_combo.addItem(f"{choice.title}{suffix}", choice.name)
        self.backbone_combo.setCurrentIndex(max(0, self.backbone_combo.findData(DEFAULT_BACKBONE)))
        self.backbone_combo.blockSignals(False)
        self._fill_layers()

    def _fill_layers(self) -> None:
        self.layer_combo.clear()
        index = self.backbone_combo.currentIndex()
        if not 0 <= index < len(self._backbones):
            return
        choice = self._backbones[index]
        for layer in choice.layers:
            suffix = " (default)" if layer == choice.default_layer else ""
            self.layer_combo.addItem(f"{layer}{suffix}", layer)
        self.layer_combo.setCurrentIndex(max(0, self.layer_combo.findData(choice.default_layer)))

    @property
    def retrains_by_itself(self) -> bool:
        """Whether the chosen method reruns by itself after labeling (the box is ticked, Quick is chosen)."""
        return self.auto_retrain.isChecked() and self.method.trains_on_features

    def _show_auto_retrain(self, method: TrainingMethod) -> None:
        self.auto_retrain.setEnabled(method.trains_on_features)
        self.auto_retrain_note.setVisible(not method.trains_on_features)
        self.auto_retrain_note.setText(
            f"{method.title} training runs only when you press Start: nothing retrains by itself "
            f"while it is chosen. Choose {self.methods[0].title} to retrain as you label."
        )

    def set_running(self, running: bool) -> None:
        """While a run goes on, its options cannot change."""
        for name, button in self.method_buttons.items():
            button.setEnabled(not running and name not in self.unavailable)
        self.advanced.setEnabled(not running)

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
