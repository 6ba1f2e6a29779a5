import numpy as np
import pytest

from edgehema import ProfileError, ProfileMismatchError, Sample, builtin_profiles, get_profile, load_profile

OPTICAL_11 = [
    "fsc_lo_peak", "fsc_lo_area", "fsc_hi_peak", "fsc_hi_area", "ssc_peak", "ssc_area",
    "fl_peak", "fl_area", "ext_peak", "ext_area", "ext_width",
]


def test_shipped_profiles_and_default():
    profiles = builtin_profiles()
    assert set(profiles) >= {"optical-11", "sysmex-xn-ret"}
    assert get_profile(None).name == "optical-11"
    assert list(get_profile("optical-11").feature_names) == OPTICAL_11
    sysmex = get_profile("sysmex-xn-ret")
    assert list(sysmex.feature_names) == ["FSC", "SSC", "SFL", "FSCW"]
    assert sysmex.auxiliary == ("RepeatCount", "Phase", "ParticleID")
    assert sysmex.rows_per_part == 65535


def test_every_feature_has_unit_range_and_meaning():
    for prof in builtin_profiles().values():
        for f in prof.features:
            assert f.unit and f.description, (prof.name, f.name)
            assert f.range[0] < f.range[1]
            assert f.channel in ("fsc_lo", "fsc_hi", "ssc", "fl", "ext")
            assert f.measure in ("peak", "area", "width")


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ProfileError, match="unknown instrument profile 'nope'.*optical-11"):
        get_profile("nope")


def test_a_third_instrument_is_one_file(tmp_path):
    path = tmp_path / "impedance-3.toml"
    path.write_text(
        'name = "impedance-3"\ndescription = "test"\n'
        '[[features]]\nname = "volume"\nunit = "fL"\nrange = [0, 400]\nchannel = "ext"\nmeasure = "area"\n'
        '[[features]]\nname = "fl"\nunit = "a.u."\nrange = [0, 1e5]\nchannel = "fl"\nmeasure = "peak"\n'
    )
    prof = get_profile(str(path))
    assert prof.name == "impedance-3" and prof.feature_names == ("volume", "fl")
    s = Sample(events=np.zeros((3, 2)), profile=prof)
    assert s.n_events == 3 and s.column("FL").shape == (3,)


def test_malformed_profile_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[features]]\nname = "a"\nrange = [5, 1]\n')
    with pytest.raises(ProfileError, match="bad.toml: invalid instrument profile: feature a: range must be increasing"):
        load_profile(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ProfileError, match="broken.toml: invalid TOML"):
        load_profile(broken)


def test_sample_shape_must_fit_profile():
    with pytest.raises(ProfileMismatchError, match="do not fit profile optical-11"):
        Sample(events=np.zeros((4, 5)), profile=get_profile())


def test_from_columns_orders_by_profile():
    prof = get_profile("sysmex-xn-ret")
    cols = {"SFL": [3.0], "fsc": [1.0], "FSCW": [4.0], "SSC": [2.0], "ParticleID": [7]}
    s = Sample.from_columns(cols, prof)
    assert s.events.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert s.auxiliary["ParticleID"].tolist() == [7]
    assert s.events.dtype == np.float32 and s.events.flags.c_contiguous
