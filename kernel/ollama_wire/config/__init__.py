"""The settings kit every ollama-fleet application declares its settings with.

An application's settings are one frozen *root* (:class:`Root`) composed of frozen
*groups* (:class:`Group`), one per concern; each component receives its group.  A
setting is a group field declared with :func:`setting`: its documentation, unit,
bounds or choices and names outside are data, so the command-line flags
(:func:`add_arguments`), the environment variables, the YAML keys, the checks and the
table tests are all read from the one declaration.

* ``declare`` — :func:`setting`, :class:`Setting`, :class:`Group`, :class:`SettingsError`;
* ``table``   — :class:`Declared`: a root's settings as rows (key, variable, flag, type);
* ``convert`` — a value from a variable's or flag's text, errors naming the source;
* ``root``    — :class:`Root`: build from keys, copy with changes, collect from sources;
* ``flags``   — argparse flags, one section per group.

All of it is pure: the environment is passed in as a mapping (only ``main()`` reads
``os.environ``), and a test passes a dict.
"""

from .declare import Group, Setting, SettingsError, setting
from .flags import add_arguments, help_text
from .root import Root
from .table import Declared

__all__ = [
    "Declared",
    "Group",
    "Root",
    "Setting",
    "SettingsError",
    "add_arguments",
    "help_text",
    "setting",
]
