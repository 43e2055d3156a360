//! The node's own health as others read it (/health, etcd Status and Alarm).

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Loading,
    Healthy,
    Degraded,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Loading => "loading",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
        }
    }
}

/// Shared, lock-free health cell.
#[derive(Debug)]
pub struct HealthCell(AtomicU8);

impl HealthCell {
    pub fn new(h: Health) -> HealthCell {
        HealthCell(AtomicU8::new(h as u8))
    }

    pub fn get(&self) -> Health {
        match self.0.load(Ordering::Acquire) {
            0 => Health::Loading,
            1 => Health::Healthy,
            _ => Health::Degraded,
        }
    }

    pub fn set(&self, h: Health) {
        let old = self.0.swap(h as u8, Ordering::AcqRel);
        if old != h as u8 {
            log::info!(
                "health: {} -> {}",
                HealthCell(AtomicU8::new(old)).get().as_str(),
                h.as_str()
            );
        }
    }
}

/// This node's role for log lines: loading until it serves, then its
/// primary state.
static ROLE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

const ROLES: [&str; 4] = ["loading", "primary", "draining", "replica"];

pub fn role() -> &'static str {
    ROLES[(ROLE.load(Ordering::Relaxed) as usize).min(ROLES.len() - 1)]
}

/// Sets the role shown in log lines ("loading", "primary", "draining", "replica").
pub fn set_role(role: &str) {
    if let Some(i) = ROLES.iter().position(|r| *r == role) {
        let old = ROLE.swap(i as u8, Ordering::Relaxed);
        if old as usize != i {
            log::info!("state_transition: role {} -> {role}", ROLES[old as usize]);
        }
    }
}
