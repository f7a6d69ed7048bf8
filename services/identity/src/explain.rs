//! Explaining a profile: the merge tree built from its edges in the order they were
//! applied (each join is the edge that first connected two parts; later edges between
//! already-joined parts are listed but not joins). Pure: works on graph or stored edges.

use std::collections::HashMap;

use crate::graph::Edge;
use crate::identifier::NodeKey;

/// A node of the merge tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeTree {
    Leaf(NodeKey),
    Join {
        left: Box<MergeTree>,
        right: Box<MergeTree>,
        edge: Edge,
    },
}

impl MergeTree {
    /// The identifiers under this node.
    pub fn leaves(&self) -> Vec<NodeKey> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(t) = stack.pop() {
            match t {
                MergeTree::Leaf(k) => out.push(*k),
                MergeTree::Join { left, right, .. } => {
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
        out
    }

    /// Number of joins under this node.
    pub fn joins(&self) -> usize {
        match self {
            MergeTree::Leaf(_) => 0,
            MergeTree::Join { left, right, .. } => 1 + left.joins() + right.joins(),
        }
    }
}

/// Builds the merge forest of `members` from `edges` (sorted here by `seq`). A connected
/// profile gives exactly one tree; edges touching non-members are ignored.
pub fn merge_tree(members: &[NodeKey], edges: &[Edge]) -> Vec<MergeTree> {
    let mut slot: HashMap<NodeKey, usize> = HashMap::with_capacity(members.len());
    let mut parent: Vec<usize> = Vec::with_capacity(members.len());
    let mut trees: Vec<Option<MergeTree>> = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if slot.insert(*m, i).is_none() {
            parent.push(i);
            trees.push(Some(MergeTree::Leaf(*m)));
        } else {
            parent.push(i);
            trees.push(None);
        }
    }
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut sorted: Vec<&Edge> = edges.iter().collect();
    sorted.sort_by_key(|e| e.seq);
    for e in sorted {
        let (Some(&a), Some(&b)) = (slot.get(&e.from), slot.get(&e.to)) else {
            continue;
        };
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra == rb {
            continue;
        }
        let (Some(left), Some(right)) = (trees[ra].take(), trees[rb].take()) else {
            continue;
        };
        parent[rb] = ra;
        trees[ra] = Some(MergeTree::Join {
            left: Box::new(left),
            right: Box::new(right),
            edge: e.clone(),
        });
    }
    trees.into_iter().flatten().collect()
}
