"""A Label Studio project's label config: written for a new project, read back from any project.

The loop needs a text classification config: one ``<Text>`` object (the text the annotator reads, ``value="$text"``)
and one ``<Choices>`` control over it (single choice, or ``choice="multiple"`` for multi-label), whose ``<Choice>``
values are the candidate labels, in order. Label Studio's own templates for text classification have this shape.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr


class ConfigError(ValueError):
    """A label config the loop cannot work with (the message says what it lacks)."""


@dataclass(frozen=True)
class LabelConfig:
    """What the loop reads from a label config.

    Attributes:
        text_name: the ``<Text>`` tag's ``name`` (``to_name`` of every result).
        text_field: the task data key it shows (``$text`` -> ``text``).
        choices_name: the ``<Choices>`` tag's ``name`` (``from_name`` of every result).
        labels: the ``<Choice>`` values, in order.
        multi_label: ``choice="multiple"``.
    """

    text_name: str
    text_field: str
    choices_name: str
    labels: tuple[str, ...]
    multi_label: bool = False

    def result(self, chosen: list[str] | str) -> list[dict]:
        """A Label Studio result (an annotation's or a prediction's) choosing ``chosen``."""
        values = [chosen] if isinstance(chosen, str) else list(chosen)
        return [{"from_name": self.choices_name, "to_name": self.text_name, "type": "choices",
                 "value": {"choices": values}}]

    def chosen(self, result: list[dict]) -> list[str]:
        """The choices of this config's question in a result (``[]`` when it answers none)."""
        for item in result or []:
            if item.get("from_name") == self.choices_name and item.get("type", "choices") == "choices":
                return list(item.get("value", {}).get("choices", []))
        return []


def build_config(labels: list[str], multi_label: bool = False, descriptions: dict[str, list[str]] | None = None
                 ) -> str:
    """The label config of a new project: a ``text`` field and a ``label`` question over ``labels``; a label's
    descriptions become its choice's hint (``hint`` attribute, shown on hover)."""
    choices = []
    for label in labels:
        hint = " ".join((descriptions or {}).get(label, []))
        choices.append(f'    <Choice value={quoteattr(label)}' + (f" hint={quoteattr(hint)}" if hint else "") + "/>")
    mode = "multiple" if multi_label else "single"
    return ("<View>\n  <Text name=\"text\" value=\"$text\"/>\n"
            f"  <Choices name=\"label\" toName=\"text\" choice=\"{mode}\" showInline=\"false\">\n"
            + "\n".join(choices) + "\n  </Choices>\n</View>\n")


def parse_config(xml: str) -> LabelConfig:
    """Read a project's label config.

    Raises:
        ConfigError: not XML, no ``<Text>`` with a ``$field`` value, no ``<Choices>`` over it, or fewer than two
            choices.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(f"the label config is not valid XML: {exc}") from None
    texts = {t.get("name"): t for t in root.iter() if t.tag == "Text" and t.get("name")}
    for control in root.iter():
        if control.tag != "Choices":
            continue
        target = texts.get(control.get("toName", ""))
        if target is None:
            continue
        value = target.get("value", "")
        if not value.startswith("$"):
            raise ConfigError(f"the <Text name={target.get('name')!r}> shows {value!r}, not a task field ($name)")
        labels = tuple(c.get("value") for c in control.iter() if c.tag == "Choice" and c.get("value"))
        if len(labels) < 2:
            raise ConfigError(f"the <Choices name={control.get('name')!r}> has {len(labels)} choice(s): the loop "
                              "needs at least two candidate labels")
        return LabelConfig(target.get("name"), value[1:], control.get("name"), labels,
                           control.get("choice", "single") == "multiple")
    raise ConfigError("the label config has no <Choices> over a <Text> field: the loop works on text classification "
                      "projects (e.g. Label Studio's 'Text Classification' template)")
