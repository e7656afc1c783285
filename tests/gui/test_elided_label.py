"""ElidedLabel: the text shortened in the middle to the label's width, re-fitted on resize
and font changes, the whole text in the tooltip."""

from PySide6.QtGui import QFont

from zvstudio.gui.elided_label import ElidedLabel

NAME = "a_lora_with_a_long_descriptive_file_name_v2.safetensors"


def shown(qtbot, text: str) -> ElidedLabel:
    label = ElidedLabel(text)
    qtbot.addWidget(label)
    label.show()  # Qt delivers the resize events of shown widgets only
    return label


def fits(label: ElidedLabel) -> bool:
    return label.fontMetrics().horizontalAdvance(label.text()) <= label.width()


def test_text_is_shortened_to_the_width_and_restored_when_wide(qtbot):
    label = shown(qtbot, NAME)
    label.resize(200, 20)
    assert "…" in label.text() and label.text().endswith(".safetensors") and fits(label)
    assert label.text().startswith("a_lora")
    assert label.full_text() == label.toolTip() == NAME
    label.resize(2000, 20)
    assert label.text() == NAME


def test_new_text_and_a_bolder_font_are_refitted(qtbot):
    label = shown(qtbot, "short")
    label.resize(140, 20)
    assert label.text() == "short"
    label.set_full_text(NAME)
    assert "…" in label.text() and fits(label) and label.toolTip() == NAME
    regular = label.text()
    font = QFont(label.font())
    font.setPointSizeF(font.pointSizeF() * 1.6)
    label.setFont(font)
    assert fits(label) and len(label.text()) < len(regular)
