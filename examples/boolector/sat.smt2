; Is there an 8-bit x with 3x = 15 (mod 256)? Yes: x = 5. Boolector prints
; `sat` (and with `-m` the model) and exits 10.
(set-logic QF_BV)
(declare-fun x () (_ BitVec 8))
(assert (= (bvmul x #x03) #x0f))
(check-sat)
