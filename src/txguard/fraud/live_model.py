"""The detector's model, loaded at start and swapped while running when a new version appears.

`TXGUARD_MODEL_DIR` names an artifact directory, typically a symlink the operator repoints at a
new version (`ln -sfn models/v2 models/live`). Every `TXGUARD_MODEL_POLL_SECONDS` the detector
reads the artifact's version; when it changed, the new model is loaded and takes over between two
batches, so every partition switches at exactly one offset and no record is skipped or scored
twice. An artifact that fails to load (half-copied, corrupt) is reported and the running model
stays.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from txguard.config import Settings
from txguard.fraud.models.artifact import METADATA_FILE, ModelArtifactError, load_model
from txguard.fraud.rules import default_rules
from txguard.fraud.scoring import ModelScorer, RuleScorer, Scorer

log = logging.getLogger(__name__)


class ModelNotLoadable(RuntimeError):
    """The configured model cannot be loaded at start; the message names the file."""


def artifact_version(directory: Path) -> str | None:
    """The version recorded in an artifact's metadata, None when it cannot be read."""
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    version = metadata.get("version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else None


class LiveModel:
    """Builds the scorer from settings and rebuilds it when the artifact's version changes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._checked_at = time.monotonic()
        self._versions = (
            self._version(settings.model_dir),
            self._version(settings.shadow_model_dir),
        )
        try:
            self.scorer = self._build()
        except (ModelArtifactError, ValueError) as exc:
            raise ModelNotLoadable(f"cannot load the model: {exc}") from exc
        self.swaps = 0

    def refreshed(self) -> Scorer:
        """The scorer to use for the next batch: a new one when a new version was published."""
        now = time.monotonic()
        if now - self._checked_at < self.settings.model_poll_seconds:
            return self.scorer
        self._checked_at = now
        versions = (
            self._version(self.settings.model_dir),
            self._version(self.settings.shadow_model_dir),
        )
        if versions == self._versions:
            return self.scorer
        if self.settings.model_dir is not None and versions[0] is None:
            return self.scorer  # The artifact is being replaced; look again at the next poll.
        try:
            scorer = self._build()
        except (ModelArtifactError, ValueError) as exc:
            log.warning(
                "new model version not loaded, keeping %s: %s", self.scorer.model_version, exc
            )
            return self.scorer
        log.info("model swapped: %s -> %s", self.scorer.model_version, scorer.model_version)
        self._versions = versions
        self.scorer = scorer
        self.swaps += 1
        return scorer

    def _build(self) -> Scorer:
        rules = default_rules(self.settings)
        if self.settings.model_dir is None:
            return RuleScorer(rules)
        model = load_model(self.settings.model_dir)
        shadow_dir = self.settings.shadow_model_dir
        shadow = load_model(shadow_dir) if shadow_dir is not None else None
        return ModelScorer(model, rules, shadow=shadow)

    @staticmethod
    def _version(directory: Path | None) -> str | None:
        return artifact_version(directory.resolve()) if directory is not None else None
