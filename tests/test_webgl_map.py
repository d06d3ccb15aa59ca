"""The map's colour keys and selection masks (the browser side is in test_map_browser.py)."""

from __future__ import annotations

import base64

import numpy as np

from studio import webgl_map


def test_colour_keys_by_class_state_and_score():
    kind = np.array([0, 1, 1, 1], np.uint8)  # one real image, three samples
    label = np.array([2, 0, 1, 2])
    index = np.array([7, 0, 1, 2])  # the samples' rows in the generation
    names = ["a", "b", "c"]
    by_class = webgl_map.colour_keys("class", kind, label, index, names)
    np.testing.assert_array_equal(by_class["keys"], [2, 0, 1, 2])
    assert len(by_class["palette"]) == 256 and [t for _, t in by_class["legend"]] == names
    state = np.array([3, 1, 0], np.int8)  # dropped by hand, kept by the band, dropped by it
    kept = webgl_map.colour_keys("kept", kind, label, index, names, state=state)
    np.testing.assert_array_equal(kept["keys"], [0, 4, 1, 2])
    score = webgl_map.colour_keys("fidelity", kind, label, index, names,
                                  values=np.array([0.5, np.nan, 1.0]))
    np.testing.assert_array_equal(score["keys"], [webgl_map.MISSING, 0, webgl_map.MISSING,
                                                  webgl_map.RAMP_STEPS - 1])
    assert score["legend"][0][1].startswith("0.5") and score["legend"][1][1].startswith("1 ")
    payload = webgl_map.payload("/x", "map_1", 4, score, names, "t", token="tok",
                                select="/sel")
    assert base64.b64decode(payload["colour"]) == bytes(score["keys"])
    assert payload["token"] == "tok" and payload["select"] == "/sel"
