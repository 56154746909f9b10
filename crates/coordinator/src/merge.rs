//! Merging the per-platform graphs before solving: BuildKit's vertices are
//! content-addressed, so a step whose definition is the same in several
//! target graphs is one vertex. Here a stage's FROM and each prefix of its
//! steps get an identity made of the execution platform, the base (another
//! stage by its identity), and each step's expanded text, operation and
//! used build args, with `COPY --from`/mount stages by identity too. A
//! prefix that several targets share is solved once (see
//! [`crate::solve`]); every target graph takes it from the cache without
//! showing it again, and goes on with its own steps.
//!
//! In practice this is the start of a `FROM --platform=$BUILDPLATFORM …
//! AS build` stage: the toolchain steps before `ARG TARGETARCH` (which puts
//! the target's value into the following steps' build args, so they
//! differ). Stages that execute on the target platform differ by platform
//! and are never shared.

use std::collections::HashMap;
use xbuild_oci::Platform;
use xbuild_plan::{Base, BuildGraph, FileSource, Op, Stage, Step};

/// A shared prefix of one graph's stage: the stage index and how many of
/// its steps (after FROM) are shared.
pub type Presolved = (usize, usize);

/// The merged graph of a build: every distinct FROM and step prefix once.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// For each node (a FROM or a step prefix), the graphs using it.
    users: Vec<Vec<usize>>,
    /// For each graph and stage, the node of FROM then of each step prefix.
    ids: Vec<Vec<Vec<usize>>>,
    /// The target platform of each graph.
    targets: Vec<Platform>,
}

fn remap_source(f: &mut FileSource, map: &impl Fn(usize) -> usize) {
    if let FileSource::Stage(i) = f {
        *i = map(*i);
    }
}

/// A copy of `step` whose stage references go through `map`.
fn remap_step(step: &Step, map: &impl Fn(usize) -> usize) -> Step {
    let mut s = step.clone();
    match &mut s.op {
        Op::Copy(c) => remap_source(&mut c.from, map),
        Op::Exec(e) => {
            for m in &mut e.mounts {
                if let Some(f) = &mut m.from {
                    remap_source(f, map);
                }
            }
        }
        Op::Config(_) => {}
    }
    s
}

/// A copy of `stage`, its first `keep` steps only, whose stage references
/// go through `map`.
fn remap_stage(stage: &Stage, keep: usize, map: &impl Fn(usize) -> usize) -> Stage {
    let mut s = stage.clone();
    if let Base::Stage(i) = &mut s.base {
        *i = map(*i);
    }
    s.steps = stage.steps[..keep.min(stage.steps.len())]
        .iter()
        .map(|st| remap_step(st, map))
        .collect();
    s
}

impl Merged {
    /// Merge `graphs` (one per target platform, in request order).
    pub fn new(graphs: &[BuildGraph]) -> Merged {
        let mut by_def: HashMap<(Option<usize>, String), usize> = HashMap::new();
        let mut out = Merged {
            targets: graphs.iter().map(|g| g.platform.clone()).collect(),
            ..Default::default()
        };
        let mut intern = |out: &mut Merged, parent: Option<usize>, def: String, g: usize| {
            let next = out.users.len();
            let id = *by_def.entry((parent, def)).or_insert(next);
            if id == next {
                out.users.push(Vec::new());
            }
            if !out.users[id].contains(&g) {
                out.users[id].push(g);
            }
            id
        };
        for (gi, g) in graphs.iter().enumerate() {
            let mut stages: Vec<Vec<usize>> = Vec::with_capacity(g.stages.len());
            for (si, st) in g.stages.iter().enumerate() {
                // A stage by the identity of its whole definition. Planning
                // orders dependencies first; a forward reference (which the
                // engine rejects) keeps the stage to its graph.
                let full = |i: usize| {
                    stages
                        .get(i)
                        .and_then(|n| n.last().copied())
                        .unwrap_or(usize::MAX)
                };
                let forward = st.dependencies().iter().any(|d| *d >= si);
                let from = remap_stage(st, 0, &full);
                let def = match serde_json::to_string(&from) {
                    Ok(d) if !forward => d,
                    _ => format!("unmergeable {gi} {si}"),
                };
                let mut nodes = vec![intern(&mut out, None, def, gi)];
                for step in &st.steps {
                    let def = serde_json::to_string(&remap_step(step, &full))
                        .unwrap_or_else(|_| format!("unmergeable {gi} {si} {}", nodes.len()));
                    let parent = nodes.last().copied();
                    nodes.push(intern(&mut out, parent, def, gi));
                }
                stages.push(nodes);
            }
            out.ids.push(stages);
        }
        out
    }

    fn shared(&self, node: usize) -> bool {
        self.users[node].len() > 1
    }

    /// The target platforms `node` serves, in request order.
    fn served(&self, node: usize) -> Vec<Platform> {
        let mut gs = self.users[node].clone();
        gs.sort_unstable();
        gs.iter().map(|g| self.targets[*g].clone()).collect()
    }

    /// Graph `g`'s stages with a shared prefix: the stage and the number of
    /// its steps shared with another target graph (solved once, before the
    /// targets). A stage whose only shared part is FROM is left out, unless
    /// it has no steps (then another shared step may read it).
    pub fn presolved(&self, g: usize) -> Vec<Presolved> {
        let Some(stages) = self.ids.get(g) else {
            return Vec::new();
        };
        stages
            .iter()
            .enumerate()
            .filter_map(|(si, nodes)| {
                let k = nodes.iter().take_while(|n| self.shared(**n)).count();
                let steps = nodes.len() - 1;
                (k > 1 || (k == 1 && steps == 0)).then(|| (si, k - 1))
            })
            .collect()
    }

    /// The graph of the shared prefixes, solved once before the targets, in
    /// dependency order; its platform is the one most of them execute on.
    /// `None` when nothing is shared.
    pub fn shared_graph(&self, graphs: &[BuildGraph]) -> Option<SharedGraph> {
        // Each distinct shared prefix once, by its first user.
        let mut units: Vec<(usize, usize, usize, usize)> = Vec::new(); // (from node, g, s, k)
        for g in 0..graphs.len() {
            for (s, k) in self.presolved(g) {
                let from = self.ids[g][s][0];
                let end = self.ids[g][s][k];
                if !units
                    .iter()
                    .any(|(_, ug, us, uk)| self.ids[*ug][*us][*uk] == end)
                {
                    units.push((from, g, s, k));
                }
            }
        }
        units.sort_by_key(|u| u.0);
        let at = |g: usize, s: usize| {
            let want = self.ids[g][s].last().copied();
            units
                .iter()
                .position(|(_, ug, us, uk)| Some(self.ids[*ug][*us][*uk]) == want)
                .unwrap_or(usize::MAX)
        };
        let mut stages = Vec::new();
        let mut served = Vec::new();
        for (_, g, s, k) in &units {
            let st = &graphs[*g].stages[*s];
            stages.push(remap_stage(st, *k, &|j| at(*g, j)));
            served.push(SharedStage {
                name: st.display_name(),
                total: st.steps.len() + 1,
                served: self.served(self.ids[*g][*s][*k]),
            });
        }
        let mut count: Vec<(Platform, usize)> = Vec::new();
        for s in &stages {
            match count.iter_mut().find(|(p, _)| *p == s.platform) {
                Some((_, n)) => *n += 1,
                None => count.push((s.platform.clone(), 1)),
            }
        }
        let platform = count.iter().max_by_key(|(_, n)| *n)?.0.clone();
        Some(SharedGraph {
            graph: BuildGraph {
                // Every target graph of one build carries the same `--allow`.
                entitlements: graphs[units[0].1].entitlements,
                platform,
                build_platform: graphs[units[0].1].build_platform.clone(),
                target: stages.len() - 1,
                stages,
                unused_build_args: Vec::new(),
                warnings: Vec::new(),
                project: graphs[units[0].1].project.clone(),
                labels: graphs[units[0].1].labels.clone(),
            },
            stages: served,
        })
    }
}

/// A stage of the shared graph, as the targets know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStage {
    /// Display name (`build`).
    pub name: String,
    /// The whole stage's vertex count (FROM included), for labels.
    pub total: usize,
    /// The target platforms its shared steps serve.
    pub served: Vec<Platform>,
}

/// The shared prefixes of a build as one graph of their own.
#[derive(Debug, Clone)]
pub struct SharedGraph {
    /// The graph (its `platform` is the execution platform of the stages).
    pub graph: BuildGraph,
    /// Its stages, in the graph's order, as the targets know them.
    pub stages: Vec<SharedStage>,
}

impl SharedGraph {
    /// Every target platform served by some shared stage, in order.
    pub fn targets(&self) -> Vec<Platform> {
        let mut out: Vec<Platform> = Vec::new();
        for s in &self.stages {
            for p in &s.served {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbuild_plan::{plan_source, OfflineResolver, PlanOptions};

    const CROSS: &str = "FROM --platform=$BUILDPLATFORM base AS build\n\
        RUN echo toolchain\n\
        ARG TARGETARCH\n\
        RUN echo $TARGETARCH > /out\n\
        FROM base\n\
        COPY --from=build /out /out\n";

    fn graphs(df: &str, targets: &[&str]) -> Vec<BuildGraph> {
        let mut opts = PlanOptions::new("Dockerfile");
        opts.build_platform = Platform::parse("linux/amd64").unwrap();
        targets
            .iter()
            .map(|t| {
                plan_source(
                    df,
                    &Platform::parse(t).unwrap(),
                    &opts,
                    &mut OfflineResolver,
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn the_steps_before_targetarch_are_shared() {
        let g = graphs(CROSS, &["linux/amd64", "linux/arm64", "linux/arm/v7"]);
        let m = Merged::new(&g);
        for i in 0..3 {
            // Stage 0 (build): FROM and `RUN echo toolchain`; the ARG step
            // already holds the target's value.
            assert_eq!(m.presolved(i), vec![(0, 1)], "graph {i}");
        }
        let sg = m.shared_graph(&g).unwrap();
        assert_eq!(sg.graph.stages.len(), 1);
        assert_eq!(sg.graph.stages[0].steps.len(), 1);
        assert_eq!(sg.graph.stages[0].steps[0].text, "RUN echo toolchain");
        assert_eq!(sg.graph.platform.to_string(), "linux/amd64");
        assert_eq!(sg.stages[0].name, "build");
        assert_eq!(sg.stages[0].total, 4);
        assert_eq!(sg.targets().len(), 3);
    }

    #[test]
    fn whole_shared_stages_keep_their_dependencies() {
        let df = "FROM --platform=$BUILDPLATFORM base AS tools\n\
            RUN echo toolchain > /t\n\
            FROM --platform=$BUILDPLATFORM base AS build\n\
            COPY --from=tools /t /t\n\
            ARG TARGETARCH\n\
            RUN echo $TARGETARCH > /out\n\
            FROM base\n\
            COPY --from=build /out /out\n";
        let g = graphs(df, &["linux/amd64", "linux/arm64"]);
        let m = Merged::new(&g);
        assert_eq!(m.presolved(1), vec![(0, 1), (1, 1)]);
        let sg = m.shared_graph(&g).unwrap();
        assert_eq!(sg.graph.stages.len(), 2);
        assert!(matches!(
            &sg.graph.stages[1].steps[0].op,
            Op::Copy(c) if c.from == FileSource::Stage(0)
        ));
    }

    #[test]
    fn ordinary_stages_are_never_shared() {
        let df = "FROM base AS a\nRUN echo a\nFROM base\nCOPY --from=a / /x\n";
        let g = graphs(df, &["linux/amd64", "linux/arm64"]);
        let m = Merged::new(&g);
        assert!(m.presolved(0).is_empty());
        assert!(m.shared_graph(&g).is_none());
        // One target: nothing to share even with a build-platform stage.
        let g = graphs(CROSS, &["linux/arm64"]);
        assert!(Merged::new(&g).shared_graph(&g).is_none());
    }
}
