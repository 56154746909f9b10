//! `--progress quiet`: nothing shown; vertices and logs kept so that
//! failures can be reported with their output.

use super::*;

impl Renderer {
    pub(super) fn quiet(&self, event: &Event) {
        // Still track vertices so failures can be reported with their output.
        if let Ok(mut st) = self.state.lock() {
            match event {
                Event::Started {
                    id,
                    platform,
                    stage,
                    index,
                    total,
                    name,
                    ..
                } => {
                    st.names.insert(
                        *id,
                        title(&platform.to_string(), stage, *index, *total, name),
                    );
                    st.next += 1;
                    let n = st.next;
                    st.vertices.insert(
                        *id,
                        VertexState {
                            number: n,
                            ..Default::default()
                        },
                    );
                }
                Event::Cached { .. } => st.steps_cached += 1,
                Event::Log { id, data, .. } => {
                    let text = String::from_utf8_lossy(data).into_owned();
                    st.logs
                        .entry(*id)
                        .or_default()
                        .extend(text.lines().map(str::to_string));
                }
                _ => {}
            }
        }
    }
}
