use std::sync::atomic::{AtomicI64, Ordering};

/// Tokens are counted in thousandths so the per-request deposit can be fractional.
const TOKEN: i64 = 1000;

/// Caps retries to a fraction of traffic, so that when every replica is failing the gateway
/// does not multiply the load on them (as linkerd's and Finagle's retry budgets do).
///
/// Each request deposits `ratio` of a token, each retry withdraws one, and the balance is
/// capped at `burst` tokens (which is also where it starts).
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl RetryBudget {
    pub fn new(ratio: f64, burst: u32) -> Self {
        let cap = i64::from(burst) * TOKEN;
        Self {
            balance: AtomicI64::new(cap),
            deposit: (ratio.clamp(0.0, 1000.0) * TOKEN as f64) as i64,
            cap,
        }
    }

    pub fn deposit(&self) {
        // A full budget (the usual case) costs one load and no write.
        if self.deposit == 0 || self.balance.load(Ordering::Relaxed) >= self.cap {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                Some((balance + self.deposit).min(self.cap))
            });
    }

    /// Take one retry from the budget; `false` if it is spent.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= TOKEN).then_some(balance - TOKEN)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_ratio() {
        let budget = RetryBudget::new(0.5, 2);
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        budget.deposit();
        assert!(!budget.withdraw(), "half a token is not a retry");
        budget.deposit();
        assert!(budget.withdraw());
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "capped at the burst size");
    }

    #[test]
    fn zero_disables_retries() {
        let budget = RetryBudget::new(0.0, 0);
        budget.deposit();
        assert!(!budget.withdraw());
    }
}
