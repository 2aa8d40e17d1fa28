"""Fuzzes settings: TOML files, known keys with any value, flag values.

Run ``python fuzz/settings_files.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("settings_files", ["settings-toml", "settings-toml-lines", "settings-flags"])
