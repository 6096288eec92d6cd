"""``prmforge doctor``: parts declare their checks (labelers/diagnostics.py), doctor registers them."""

from __future__ import annotations

from labelers import doctor
from labelers.diagnostics import DoctorCheck, DoctorItem
from labelers.policy import embedded, vllm_backend
from labelers.verify import lean


def test_backends_and_verifiers_declare_their_checks_and_doctor_registers_them():
    registered = doctor.REGISTERED_CHECKS
    assert all(isinstance(check, DoctorCheck) for check in registered)
    for declared in (embedded.DOCTOR_CHECK, vllm_backend.DOCTOR_CHECK, lean.DOCTOR_CHECK):
        assert declared in registered
    assert embedded.DOCTOR_CHECK.requires == ("llama-cpp-python",)
    assert len({check.name for check in registered}) == len(registered)  # one line per part


def test_a_missing_requirement_is_reported_with_its_hint_and_the_check_is_not_run():
    ran = []
    check = DoctorCheck("thing", lambda: ran.append(1) or DoctorItem("thing", True, "fine"),
                        requires=("prmforge-no-such-distribution", "pydantic"), install_hint="pip install thing")
    [item] = doctor.run_checks((check,))
    assert item == DoctorItem("thing", False, "missing: prmforge-no-such-distribution", "pip install thing")
    assert ran == []


def test_a_check_that_raises_is_reported_not_raised():
    def broken() -> DoctorItem:
        raise RuntimeError("probe crashed")

    fine = DoctorCheck("fine", lambda: DoctorItem("fine", True, "ok"), requires=("pydantic",))
    items = doctor.run_checks((DoctorCheck("broken", broken), fine))
    assert items[0] == DoctorItem("broken", False, "check failed: RuntimeError: probe crashed")
    assert items[1].ok
