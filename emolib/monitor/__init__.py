"""Per-token emotion monitoring (stage 05): score a conversation, or a generation live, through the
emotion vectors, and raise alerts when an emotion leaves the range it keeps on neutral text.

* :mod:`~emolib.monitor.scoring`: :class:`Monitor` (offline scores, live ``watch``/``generate``,
  calibration);
* :mod:`~emolib.monitor.alerts`: causal smoothing, alert rules and the run detector;
* :mod:`~emolib.monitor.calibration`: what neutral text looks like (percentiles per emotion);
* :mod:`~emolib.monitor.trace` / :mod:`~emolib.monitor.live`: a scored conversation, and the state
  that scores tokens as the model reads them;
* :mod:`~emolib.monitor.scenarios`: our scenarios and their headline numbers;
* :mod:`~emolib.monitor.heatmap` / :mod:`~emolib.monitor.views`: token heatmaps (HTML, PNG) and plots.

Builds on the core only (:mod:`emolib.capture`, :mod:`emolib.chat`, :mod:`emolib.vectors`).
"""

from emolib.monitor.alerts import Alert, AlertRule, RunTracker, causal_smooth, scan_alerts
from emolib.monitor.calibration import PERCENTILES, Calibration
from emolib.monitor.live import LiveSession
from emolib.monitor.scenarios import Scenario, load_scenarios, split_reference, trace_summary
from emolib.monitor.scoring import Monitor
from emolib.monitor.trace import MonitorTrace, TokenEvent

__all__ = ["PERCENTILES", "Alert", "AlertRule", "Calibration", "LiveSession", "Monitor", "MonitorTrace",
           "RunTracker", "Scenario", "TokenEvent", "causal_smooth", "load_scenarios", "scan_alerts",
           "split_reference", "trace_summary"]
