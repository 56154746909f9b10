//! `--progress rawjson`: one JSON object per event and line.

use super::*;

impl Renderer {
    pub(super) fn rawjson(&self, event: &Event) {
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
