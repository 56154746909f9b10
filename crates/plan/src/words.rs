//! Word expansion against a stage's variables, recording which build args
//! an expansion used.

use std::collections::{BTreeMap, BTreeSet};
use xbuild_dockerfile::shell::{ExpandError, Lexer};

/// The variables visible at one point of a stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// Declared ARGs with a value, in scope.
    pub args: BTreeMap<String, String>,
    /// Image ENV, in order.
    pub env: Vec<(String, String)>,
    /// ARG names in the order first declared (BuildKit lists a RUN's args
    /// in this order in its history).
    pub arg_order: Vec<String>,
}

impl Scope {
    /// The expansion environment: args overlaid by ENV (ENV always wins).
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut m = self.args.clone();
        for (k, v) in &self.env {
            m.insert(k.clone(), v.clone());
        }
        m
    }

    /// Names of args not shadowed by an ENV of the same name.
    pub fn effective_args(&self) -> BTreeMap<String, String> {
        self.args
            .iter()
            .filter(|(k, _)| !self.env.iter().any(|(e, _)| e == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Declare ARG `name` with `value`.
    pub fn set_arg(&mut self, name: &str, value: &str) {
        self.args.insert(name.to_string(), value.to_string());
        if !self.arg_order.iter().any(|n| n == name) {
            self.arg_order.push(name.to_string());
        }
    }

    /// The args of [`Scope::effective_args`] in declaration order.
    pub fn ordered_args(&self) -> Vec<(String, String)> {
        let eff = self.effective_args();
        self.arg_order
            .iter()
            .filter_map(|n| eff.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }

    /// Set or replace an ENV value, keeping its position.
    pub fn set_env(&mut self, key: &str, value: &str) {
        if let Some(slot) = self.env.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value.to_string();
        } else {
            self.env.push((key.to_string(), value.to_string()));
        }
    }
}

/// Expands words and accumulates the build args used.
pub(crate) struct Expander {
    lexer: Lexer,
    vars: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
    pub used: BTreeMap<String, String>,
    pub unmatched: BTreeSet<String>,
}

impl Expander {
    pub fn new(escape: char, scope: &Scope) -> Self {
        Expander {
            lexer: Lexer::new(escape),
            vars: scope.vars(),
            args: scope.effective_args(),
            used: BTreeMap::new(),
            unmatched: BTreeSet::new(),
        }
    }

    /// An expander over plain variables (FROM lines: global args + platform args).
    pub fn with_vars(escape: char, vars: BTreeMap<String, String>) -> Self {
        Expander {
            lexer: Lexer::new(escape),
            args: vars.clone(),
            vars,
            used: BTreeMap::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn record(&mut self, matched: &BTreeSet<String>, unmatched: &BTreeSet<String>) {
        for m in matched {
            if let Some(v) = self.args.get(m) {
                self.used.insert(m.clone(), v.clone());
            }
        }
        self.unmatched.extend(unmatched.iter().cloned());
    }

    /// Expand one word (quotes removed).
    pub fn word(&mut self, w: &str) -> Result<String, ExpandError> {
        let e = self.lexer.process_word_with_matches(w, &self.vars)?;
        self.record(&e.matched, &e.unmatched);
        Ok(e.value)
    }

    /// Expand a heredoc body: variables are replaced, quotes stay as written.
    pub fn word_literal(&mut self, w: &str) -> Result<String, ExpandError> {
        let lexer = self.lexer.skip_process_quotes(true);
        let e = lexer.process_word_with_matches(w, &self.vars)?;
        self.record(&e.matched, &e.unmatched);
        Ok(e.value)
    }

    /// Expand with field splitting (EXPOSE).
    pub fn words(&mut self, w: &str) -> Result<Vec<String>, ExpandError> {
        // Matches are recorded through a word pass; splitting does not change which names were looked up.
        let e = self.lexer.process_word_with_matches(w, &self.vars)?;
        self.record(&e.matched, &e.unmatched);
        self.lexer.process_words(w, &self.vars)
    }
}
