; x cannot be 1 and 2 at once: Boolector prints `unsat` and exits 20.
(set-logic QF_BV)
(declare-fun x () (_ BitVec 8))
(assert (= x #x01))
(assert (= x #x02))
(check-sat)
