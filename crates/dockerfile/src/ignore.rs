//! `.dockerignore` matching (moby/patternmatcher semantics).
