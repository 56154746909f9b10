//! `xbuild build --call explain`: per step, would it hit the cache, and if
//! not, why — with the solver's own key computation, without running or
//! pulling anything (base images are pinned by planning).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use xbuild_oci::{Digest, Platform};

use crate::engine::{Engine, EngineError, SolveRequest};
use crate::events::MissReason;
use crate::keys::step_label;
use crate::solve::Shared;

/// One vertex of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainStep {
    /// The target platform whose graph the step belongs to.
    pub platform: Platform,
    /// The platform that executes the step (the stage's platform: the build
    /// platform for `FROM --platform=$BUILDPLATFORM` stages). The key holds
    /// it and the cache files the step's record under it.
    pub executes_on: Platform,
    /// Stage display name.
    pub stage: String,
    /// 1-based position in the stage (FROM is 1).
    pub index: usize,
    /// Vertices in the stage, FROM included.
    pub total: usize,
    /// The instruction as written.
    pub name: String,
    /// How progress output names it (`[build 2/5] RUN make`; metadata-only
    /// steps take no number: `[build] ENV A=1`).
    #[serde(default)]
    pub label: String,
    /// The step's cache key.
    pub key: Digest,
    /// Whether a build now would take it from the cache (FROM: always).
    pub cached: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<MissReason>,
}

impl Engine {
    /// Every stage's FROM and steps with their keys and cache verdicts.
    pub async fn explain(&self, req: SolveRequest<'_>) -> Result<Vec<ExplainStep>, EngineError> {
        let g = req.graph;
        let shared = Shared::new(&req);
        let platform = g.platform.clone();
        let mut keys: HashMap<usize, Digest> = HashMap::new();
        let names: HashMap<usize, String> = g
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.display_name()))
            .collect();
        let mut out = Vec::new();
        for (i, stage) in g.stages.iter().enumerate() {
            let total = stage.steps.len() + 1;
            let exec = &stage.platform;
            let (mut key, base) = self.stage_base_key(&shared, stage, &keys, &names).await?;
            out.push(ExplainStep {
                platform: platform.clone(),
                executes_on: exec.clone(),
                stage: stage.display_name(),
                index: 1,
                total,
                name: stage.from_text.clone(),
                label: stage.step_label(0),
                key: key.clone(),
                cached: true,
                causes: Vec::new(),
            });
            let skip = req.no_cache
                || stage.name.as_deref().is_some_and(|n| {
                    req.no_cache_filter
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(n))
                });
            let mut missed: Option<String> = None;
            for (si, step) in stage.steps.iter().enumerate() {
                let sk = self
                    .step_key(
                        &shared,
                        stage,
                        si + 2,
                        step,
                        &key,
                        base.as_ref(),
                        &keys,
                        &names,
                        &HashMap::new(),
                    )
                    .await
                    .map_err(|e| EngineError::Step {
                        location: step.location.clone(),
                        instruction: step.text.clone(),
                        platform: platform.to_string(),
                        source: Box::new(e),
                    })?;
                let causes = if req.no_cache {
                    vec![MissReason::NoCache]
                } else if skip {
                    vec![MissReason::NoCacheFilter {
                        stage: stage.display_name(),
                    }]
                } else if let Some(s) = &missed {
                    vec![MissReason::ParentMissed { step: s.clone() }]
                } else if self
                    .inner
                    .cache
                    .get(exec, &sk.key, &self.inner.store)
                    .is_some()
                {
                    Vec::new()
                } else {
                    self.miss_causes(exec, &key, &sk)
                };
                // The next step names this one, its direct parent.
                if !causes.is_empty() {
                    missed = Some(step_label(stage, si + 2));
                }
                out.push(ExplainStep {
                    platform: platform.clone(),
                    executes_on: exec.clone(),
                    stage: stage.display_name(),
                    index: si + 2,
                    total,
                    name: step.title().to_string(),
                    label: step_label(stage, si + 2),
                    key: sk.key.clone(),
                    cached: causes.is_empty(),
                    causes,
                });
                key = sk.key;
            }
            keys.insert(i, key);
        }
        Ok(out)
    }
}
