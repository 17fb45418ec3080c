"""annotate/labelstudio/config.py: the label config written for a new project and read back from any project."""

from __future__ import annotations

import pytest

from annotate.labelstudio.config import ConfigError, build_config, parse_config


def test_a_built_config_reads_back_with_its_labels_mode_and_hints():
    xml = build_config(["sports", "Sci/Tech & more", 'say "hi"'], descriptions={"sports": ["A team won.", "A match."]})
    config = parse_config(xml)
    assert config.labels == ("sports", "Sci/Tech & more", 'say "hi"') and not config.multi_label
    assert (config.text_name, config.text_field, config.choices_name) == ("text", "text", "label")
    assert 'hint="A team won. A match."' in xml
    assert parse_config(build_config(["a", "b"], multi_label=True)).multi_label


def test_results_round_trip_through_the_question():
    config = parse_config(build_config(["a", "b"]))
    result = config.result("b")
    assert result == [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["b"]}}]
    assert config.chosen(result) == ["b"] and config.chosen([]) == []
    assert config.chosen([{"from_name": "other", "type": "choices", "value": {"choices": ["a"]}}]) == []


def test_a_template_of_label_studio_with_other_names_is_read():
    xml = """<View><Header value="Read"/><Text name="review" value="$body"/>
      <Choices name="sentiment" toName="review" choice="single-radio"><Choice value="Positive"/>
      <Choice value="Negative"/></Choices></View>"""
    config = parse_config(xml)
    assert (config.text_name, config.text_field, config.choices_name) == ("review", "body", "sentiment")
    assert config.labels == ("Positive", "Negative")


@pytest.mark.parametrize("xml, message", [
    ("<View><Text", "not valid XML"),
    ('<View><Image name="img" value="$image"/><Choices name="c" toName="img"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "no <Choices> over a <Text> field"),
    ('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>',
     r"has 1 choice\(s\)"),
    ('<View><Text name="t" value="fixed"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/>'
     '</Choices></View>', "not a task field"),
])
def test_configs_the_loop_cannot_use_say_why(xml, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(xml)
