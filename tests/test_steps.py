import pytest

from lottery.steps import StepError, format_steps, is_step_string, parse_steps


@pytest.mark.parametrize("text, per_epoch, expected", [
    ("160ep", 391, 160 * 391),
    ("500it", 391, 500),
    ("2ep100it", 391, 882),
    ("0it", 10, 0),
    (250, 10, 250),
])
def test_parse_steps(text, per_epoch, expected):
    assert parse_steps(text, per_epoch) == expected


@pytest.mark.parametrize("text", ["", "ep", "10", "3 epochs", "1it2ep", "-5it", "2.5ep", True])
def test_bad_step_strings_raise(text):
    with pytest.raises(StepError):
        parse_steps(text, 100)
    assert not is_step_string(text)


@pytest.mark.parametrize("text", ["160ep", "300it", "2ep100it", "0it"])
def test_round_trip(text):
    assert format_steps(parse_steps(text, 391), 391) == text


def test_iterations_beyond_an_epoch_format_canonically():
    assert format_steps(parse_steps("500it", 391), 391) == "1ep109it"


def test_format_is_inverse_of_parse_for_all_counts():
    for iterations in range(0, 1000, 7):
        assert parse_steps(format_steps(iterations, 37), 37) == iterations
