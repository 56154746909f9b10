//! `--progress rawjson`: BuildKit's SolveStatus objects, one per line (see
//! [`crate::solve_status`]); `--progress json`: xbuild's own events, one
//! per line.

use super::*;
use std::time::SystemTime;

impl Renderer {
    pub(super) fn rawjson(&self, event: &Event) {
        let update = match self.state.lock() {
            Ok(mut st) => {
                if matches!(event, Event::Cached { .. }) {
                    st.steps_cached += 1;
                }
                st.solve_status.encode(event, SystemTime::now())
            }
            Err(_) => return,
        };
        if let Some(u) = update {
            self.line(&crate::solve_status::to_line(&u));
        }
    }

    /// The last update: open transfer vertices closed, unfinished steps
    /// marked as canceled. Idempotent.
    pub(super) fn rawjson_finish(&self) {
        let update = match self.state.lock() {
            Ok(mut st) => st.solve_status.finish(SystemTime::now()),
            Err(_) => return,
        };
        if let Some(u) = update {
            self.line(&crate::solve_status::to_line(&u));
        }
    }

    pub(super) fn json(&self, event: &Event) {
        if let Ok(mut st) = self.state.lock() {
            if matches!(event, Event::Cached { .. }) {
                st.steps_cached += 1;
            }
        }
        if let Ok(s) = serde_json::to_string(event) {
            self.line(&s);
        }
    }
}
