"""Method verification: what a laboratory runs before it reports patient results from a new method
or model (ICSH: Briggs et al., Int J Lab Hematol 2014; CLSI EP05/EP15, EP06, EP09, EP17).

``plan`` reads and checks PLAN.csv; ``limits`` the limits (``limits.toml``, each with its source);
``statistics`` the figures, each tested against a published example; ``experiments`` turns the
device's results into each experiment's figures and a verdict; ``report`` the tables and the HTML.
"""

from edgehema.validation.experiments import Verification, verify
from edgehema.validation.limits import ANALYTES, Limits, load_limits
from edgehema.validation.plan import EXPERIMENTS, Plan, read_plan

__all__ = ["ANALYTES", "EXPERIMENTS", "Limits", "Plan", "Verification", "load_limits", "read_plan", "verify"]
