"""Help formatting shared by the extraction commands."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Prints each default once: ``(default: X)`` is added only where the help text
    does not already speak of a default, and never for None or an off switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)
