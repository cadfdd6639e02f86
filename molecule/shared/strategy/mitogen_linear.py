# Mitogen's linear strategy (the mitogen package from PyPI, in the deploy
# extra), found here so that the scenarios name it without knowing where the
# virtualenv is. Mitogen keeps one Python interpreter per host for the whole
# play instead of starting one and importing Ansible's module code per task:
# under TCG emulation a task then costs about a second instead of 3 to 15.
# Used by the Molecule scenarios only; operators run the roles with whatever
# strategy they choose (docs/molecule.md).
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
