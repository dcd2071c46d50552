//! Correlation-hook paths and the global dependency graph (core.md §3.7.2–3.7.4).

use std::collections::BTreeSet;

use dp3_model::ModelSpec;
use indexmap::IndexMap;

/// A resolved path: its final `(entity, attr)` destination and the links it traverses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPath {
    pub dest: String,
    pub used_links: Vec<(String, String)>,
}

/// Resolve a path of attribute names starting at `etype` (core.md §3.7.2): every step must be
/// an attribute of the current entity; a relation moves to its target; relation steps that
/// are not the last step are *used links*.
///
/// Unlike DP3, paths through mirror (read-only) attributes are rejected: DP3 accepts them
/// but then crashes during link resolution (core.md §5.8 **[bug]**).
pub fn resolve_path(
    model: &ModelSpec,
    etype: &str,
    path: &[String],
) -> Result<ResolvedPath, String> {
    let rendered = || format!("{etype}->{}", path.join("->"));
    if path.is_empty() {
        return Err(format!("Invalid path '{etype}': the path is empty"));
    }
    let mut current = etype.to_owned();
    let mut used_links = Vec::new();
    for (i, step) in path.iter().enumerate() {
        let Some(spec) = model.attr(&current, step) else {
            return Err(format!("Invalid path '{}', failed on '{step}'", rendered()));
        };
        let last = i + 1 == path.len();
        if last {
            return Ok(ResolvedPath {
                dest: format!("{current}.{step}"),
                used_links,
            });
        }
        if spec.is_read_only() {
            return Err(format!(
                "Invalid path '{}': '{step}' is a mirror attribute, which cannot be traversed",
                rendered()
            ));
        }
        match spec.data_type().and_then(|d| d.link_target()) {
            Some(target) => {
                used_links.push((current.clone(), step.clone()));
                current = target.to_owned();
            }
            // A non-relation step followed by more steps: the next step fails.
            None => {
                let next = &path[i + 1];
                return Err(format!("Invalid path '{}', failed on '{next}'", rendered()));
            }
        }
    }
    Err(format!("Invalid path '{}'", rendered()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vertex {
    Attr,
    Hook,
}

/// The global graph of attribute destinations and hook ids, sorted with Kahn's algorithm
/// exactly as DP3 (vertex insertion order, FIFO queue, edge insertion order).
#[derive(Debug, Clone, Default)]
pub struct DependencyGraph {
    vertices: IndexMap<String, Vertex>,
    edges: Vec<Vec<usize>>,
    order: Vec<String>,
}

impl DependencyGraph {
    pub fn contains_hook(&self, id: &str) -> bool {
        self.vertices.get(id) == Some(&Vertex::Hook)
    }

    /// Add a hook with its resolved `depends_on` and `may_change` destinations. On a cycle the
    /// graph is left unchanged (unlike DP3, whose rejected edges poison every later
    /// registration, core.md §3.7.4 **[bug]**) and the error names the cycle.
    pub fn add_hook(
        &mut self,
        id: &str,
        depends_on: &[String],
        may_change: &[String],
    ) -> Result<(), String> {
        if self.vertices.contains_key(id) {
            return Err(format!("Hook id {id} already present in the vertices"));
        }
        let before = self.clone();
        let hook = self.vertex(id, Vertex::Hook);
        for d in depends_on {
            let v = self.vertex(d, Vertex::Attr);
            self.edges[v].push(hook);
        }
        for m in may_change {
            let v = self.vertex(m, Vertex::Attr);
            self.edges[hook].push(v);
        }
        match self.kahn() {
            Ok(order) => {
                self.order = order;
                Ok(())
            }
            Err(cycle) => {
                *self = before;
                Err(format!(
                    "Hook {id} introduces a circular dependency: {}",
                    cycle.join(" -> ")
                ))
            }
        }
    }

    fn vertex(&mut self, name: &str, kind: Vertex) -> usize {
        if let Some(i) = self.vertices.get_index_of(name) {
            return i;
        }
        self.vertices.insert(name.to_owned(), kind);
        self.edges.push(Vec::new());
        self.vertices.len() - 1
    }

    /// Topological order of all vertices, or a cycle.
    fn kahn(&self) -> Result<Vec<String>, Vec<String>> {
        let n = self.vertices.len();
        let mut indeg = vec![0usize; n];
        for targets in &self.edges {
            for &t in targets {
                indeg[t] += 1;
            }
        }
        let mut queue: std::collections::VecDeque<usize> =
            (0..n).filter(|&v| indeg[v] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(v) = queue.pop_front() {
            order.push(v);
            for &t in &self.edges[v] {
                indeg[t] -= 1;
                if indeg[t] == 0 {
                    queue.push_back(t);
                }
            }
        }
        if order.len() == n {
            return Ok(order
                .into_iter()
                .filter_map(|v| self.vertices.get_index(v).map(|(k, _)| k.clone()))
                .collect());
        }
        Err(self.find_cycle(&indeg))
    }

    /// A cycle among the vertices Kahn could not process (positive remaining in-degree).
    fn find_cycle(&self, indeg: &[usize]) -> Vec<String> {
        let name = |v: usize| {
            self.vertices
                .get_index(v)
                .map(|(k, _)| k.clone())
                .unwrap_or_default()
        };
        let Some(start) = (0..indeg.len()).find(|&v| indeg[v] > 0) else {
            return Vec::new();
        };
        // Walk backwards along unprocessed predecessors until a vertex repeats.
        let preds: Vec<Vec<usize>> = {
            let mut p = vec![Vec::new(); indeg.len()];
            for (from, targets) in self.edges.iter().enumerate() {
                for &t in targets {
                    if indeg[from] > 0 {
                        p[t].push(from);
                    }
                }
            }
            p
        };
        let mut path = vec![start];
        let mut seen = BTreeSet::from([start]);
        let mut cur = start;
        while let Some(&p) = preds[cur].first() {
            if seen.contains(&p) {
                let pos = path.iter().position(|&v| v == p).unwrap_or(0);
                let mut cycle: Vec<String> = path[pos..].iter().rev().map(|&v| name(v)).collect();
                if let Some(first) = cycle.first().cloned() {
                    cycle.push(first);
                }
                return cycle;
            }
            seen.insert(p);
            path.push(p);
            cur = p;
        }
        path.iter().map(|&v| name(v)).collect()
    }

    /// Position of a hook in the current topological order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.order.iter().position(|v| v == id)
    }

    /// Attribute vertices with more than one incoming edge (several hooks may change them).
    pub fn multiply_changed(&self) -> Vec<String> {
        let mut indeg = vec![0usize; self.vertices.len()];
        for t in self.edges.iter().flatten() {
            indeg[*t] += 1;
        }
        self.vertices
            .iter()
            .enumerate()
            .filter(|(i, (_, k))| **k == Vertex::Attr && indeg[*i] > 1)
            .map(|(_, (name, _))| name.clone())
            .collect()
    }

    pub fn order(&self) -> &[String] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn kahn_order_matches_dp3() {
        // core.md §3.7.4: H1(A.x -> A.y) then H2([] -> A.w) gives A.x, H2, H1, A.w, A.y
        let mut g = DependencyGraph::default();
        g.add_hook("H1", &s(&["A.x"]), &s(&["A.y"])).unwrap();
        g.add_hook("H2", &[], &s(&["A.w"])).unwrap();
        assert_eq!(g.order(), s(&["A.x", "H2", "H1", "A.w", "A.y"]));
    }

    #[test]
    fn cycles_are_rejected_without_poisoning() {
        let mut g = DependencyGraph::default();
        g.add_hook("h1", &s(&["A.data1"]), &s(&["A.data2"]))
            .unwrap();
        let e = g
            .add_hook("h2", &s(&["A.data2"]), &s(&["A.data1"]))
            .unwrap_err();
        assert!(e.contains("circular dependency"), "{e}");
        assert!(
            e.contains("h1") && e.contains("h2") && e.contains("A.data1"),
            "{e}"
        );
        // the graph is unchanged, later registrations still work
        g.add_hook("h3", &s(&["A.data2"]), &s(&["A.data3"]))
            .unwrap();
        assert!(g.position("h1") < g.position("h3"));
        assert!(
            g.add_hook("h3", &[], &[])
                .unwrap_err()
                .contains("already present")
        );
    }
}
